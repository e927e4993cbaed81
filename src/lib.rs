//! cellpose-train-worker: fine-tunes Cellpose models from NimbusImage annotations.
//!
//! Map of the crate:
//! - [`pickle`]: safe pickle reading (allow-listed globals) and writing, shared by model files and
//!   numpy region responses.
//! - [`model`]: the CPnet network in tch, PyTorch state_dict files, built-in model registry.
//! - [`imageio`]: TIFF/PNG images and label masks.
//! - [`transforms`]: cellpose preprocessing (channels, percentile normalisation, resize).
//! - [`predict`]: tiled network inference (cellpose `run_net`).
//! - [`device`]: `auto|cpu|cuda[:N]`.
//! - [`annotations`]: NimbusImage annotation documents -> validated polygons/rectangles, tags, locations.
//! - [`rasterize`]: annotations -> label masks (skimage `polygon2mask` pixels), region crops.
//! - [`cli`]: the `cellpose-train-worker` subcommands.
//! - [`telemetry`]: tracing set-up.
pub mod annotations;
pub mod cli;
pub mod device;
pub mod imageio;
pub mod model;
pub mod pickle;
pub mod predict;
pub mod rasterize;
pub mod telemetry;
pub mod transforms;
