//! The embedded demo: a mock Girder seeded with a synthetic NimbusImage dataset ([`seed`]) and a
//! training job run by the queue worker ([`run`]).
pub mod run;
pub mod seed;
