//! The embedded demo: a mock Girder seeded with a synthetic NimbusImage dataset ([`seed`]).
pub mod seed;
