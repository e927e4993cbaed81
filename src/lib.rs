//! cellpose-train-worker: fine-tunes Cellpose models from NimbusImage annotations.
//!
//! Map of the crate:
//! - [`pickle`]: safe pickle reading (allow-listed globals) and writing, shared by model files and
//!   numpy region responses.
//! - [`model`]: the CPnet network in tch, PyTorch state_dict files, built-in model registry.
//! - [`train`]: training targets (labels -> flows) and diameters.
//! - [`segment`]: flows -> masks and average-precision metrics.
//! - [`cli`]: the `cellpose-train-worker` subcommands.
//! - [`telemetry`]: tracing set-up.
pub mod cli;
pub mod model;
pub mod pickle;
pub mod segment;
pub mod telemetry;
pub mod train;
