//! The training job, as NimbusImage's "Cellpose retrain" worker does it and better: parameters
//! ([`params`], [`validate`]), intake -> fetch and rasterize ([`dataset`]) -> train -> upload
//! ([`store`]), with progress and warnings as [`events`].
pub mod dataset;
pub mod error;
pub mod events;
pub mod params;
pub mod run;
pub mod store;
pub mod validate;

pub use error::JobError;
pub use events::{Events, JobEvent};
pub use run::{run_job, Controls, JobContext, JobOutcome};
pub use validate::{json_type, validate, JobParams, ParamError, ParamErrors};
