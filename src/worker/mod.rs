//! The long-running queue worker (`serve`): job claiming ([`claim`]), checkpoints in Girder
//! ([`checkpoints`]), the poll/run/heartbeat loop ([`serve`]) and its operations endpoint
//! ([`http`], [`metrics`]).
pub mod checkpoints;
pub mod claim;
mod guard;
pub mod http;
pub mod metrics;
pub mod serve;

pub use serve::{serve, JobRequest, ServeOptions, ServeSummary, WorkerError};
