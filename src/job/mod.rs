//! The training job, as NimbusImage's "Cellpose retrain" worker does it and better. It reads as
//! its stages, each a module with one entry taking and returning a typed value:
//!
//! [`request`] (what the platform sent) -> [`intake`] (typed parameters, user, dataset, base
//! model: a [`intake::Plan`]) -> [`fetch`] (annotations, image crops, label masks:
//! [`fetch::Samples`]) -> [`train`] ([`train::Trained`]) -> [`evaluate`] (AP before and after)
//! -> [`upload`] ([`JobOutcome`]); [`run::run_job`] is the five calls. The stages talk to the
//! model through [`family::Family`]; progress steps come from one table ([`stages`]); one
//! [`crate::control::Control`] stops any stage. Each family is the one source of its tool's facts
//! (fields, ranges, built-ins, folder: [`family::Facts`]); parameters are checked in [`validate`]
//! against the field table of [`params`]; what a job runs with and ends with is in [`context`];
//! Girder folders are in [`store`], the model replace protocol in [`replace`]; progress, warnings
//! and checkpoints are [`events`].
pub mod context;
pub mod dataset;
pub mod error;
pub mod evaluate;
pub mod events;
pub mod family;
pub mod fetch;
pub mod intake;
pub mod package;
pub mod params;
pub mod replace;
pub mod request;
pub mod run;
pub mod stages;
pub mod store;
pub mod train;
pub mod upload;
pub mod validate;

pub use context::{JobContext, JobOutcome};
pub use error::JobError;
pub use events::{Events, JobEvent};
pub use family::{validate, Cpnet, Cpsam, Facts, Family};
pub use request::{JobRequest, Request, RequestError};
pub use run::run_job;
pub use validate::{json_type, JobParams, ParamError, ParamErrors};
