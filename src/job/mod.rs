//! The training job, as NimbusImage's "Cellpose retrain" worker does it and better. It reads as
//! its stages, each a module with one entry taking and returning a typed value:
//!
//! [`request`] (what the platform sent) -> [`intake`] (typed parameters, user, dataset, base
//! model: a [`intake::Plan`]) -> [`fetch`] (annotations, image crops, label masks:
//! [`fetch::Samples`]) -> [`train`] ([`train::Trained`]) -> [`evaluate`] (AP before and after)
//! -> [`upload`] ([`JobOutcome`]); [`run::run_job`] is the five calls. The stages talk to the
//! model through [`family::Family`]; progress steps come from one table ([`stages`]); one
//! [`crate::control::Control`] stops any stage. Parameters are checked in [`validate`] against
//! the field table in [`params`] (Cellpose-SAM's: [`validate_cpsam`], [`params_cpsam`]); Girder
//! folders are in [`store`], the model replace protocol in [`replace`]; progress and warnings are
//! [`events`].
pub mod dataset;
pub mod error;
pub mod evaluate;
pub mod events;
pub mod family;
pub mod fetch;
pub mod intake;
pub mod package;
pub mod params;
pub mod params_cpsam;
pub mod replace;
pub mod request;
pub mod run;
pub mod stages;
pub mod store;
pub mod train;
pub mod upload;
pub mod validate;
pub mod validate_cpsam;

pub use error::JobError;
pub use events::{Events, JobEvent};
pub use family::{Cpnet, Cpsam, Family};
pub use request::{JobRequest, Request, RequestError};
pub use run::{run_job, JobContext, JobOutcome};
pub use validate::{json_type, validate, JobParams, ParamError, ParamErrors};
