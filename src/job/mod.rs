//! The training job: parameters ([`params`], [`validate`]); stages intake -> fetch -> rasterize ->
//! train -> upload follow as the Girder client lands.
pub mod params;
pub mod validate;

pub use validate::{validate, JobParams, ParamError, ParamErrors};
