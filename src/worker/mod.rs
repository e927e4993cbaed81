//! The long-running queue worker (`serve`): the loop and one round of it ([`serve`]), finding
//! and claiming jobs ([`poll`], [`lease`], [`claim`]), running one ([`execute`]), reporting to
//! it ([`report`]), checkpoints in Girder ([`checkpoints`]), and the operations endpoint
//! ([`http`], [`metrics`]).
pub mod checkpoints;
pub mod claim;
mod execute;
mod guard;
pub mod http;
pub mod lease;
pub mod metrics;
mod poll;
mod report;
pub mod serve;

pub use serve::{serve, Finish, ServeOptions, ServeSummary, Worker, WorkerError};
