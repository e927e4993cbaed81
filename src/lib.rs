//! cellpose-train-worker: fine-tunes Cellpose models from NimbusImage annotations.
//!
//! Map of the crate:
//! - [`pickle`]: safe pickle reading (allow-listed globals) and writing, shared by model files and
//!   numpy region responses.
//! - [`model`]: the CPnet and Cellpose-SAM networks in tch, model families, PyTorch state_dict
//!   files, built-in model registry.
//! - [`imageio`]: TIFF/PNG images and label masks.
//! - [`limits`]: the stated limits on every size a user, a file or a server gives (epochs,
//!   images per epoch, batches, network widths, diameters, image sizes).
//! - [`transforms`]: cellpose preprocessing (channels, percentile normalisation, resize).
//! - [`predict`]: tiled network inference (cellpose `run_net`).
//! - [`predict_cpsam`]: the same for Cellpose-SAM models with cellpose 4's semantics.
//! - [`segment`]: flows -> masks (cellpose `compute_masks`) and average-precision metrics.
//! - [`evaluate`]: image -> masks (cellpose `eval`), AP against ground truth, `segment`/`eval` files.
//! - [`report`]: training history: metrics.jsonl, TensorBoard events, the report picture, QC CSV,
//!   cellpose's epoch log line, the best-validation model.
//! - [`export`]: BioImage.IO model packages.
//! - [`device`]: parses `auto|cpu|cuda[:N]`.
//! - [`precision`]: float32 or bf16 mixed precision for a run, and why.
//! - [`girder`]: async Girder REST client (jobs, files, annotations, large_image tiles).
//! - [`numpy`]: numpy region pickles: safe decode to a typed 2-D array, protocol-5 encode.
//! - [`mock_girder`]: an in-process mock Girder 5 server for tests and the demo.
//! - [`annotations`]: NimbusImage annotation documents -> validated polygons/rectangles, tags, locations.
//! - [`rasterize`]: annotations -> label masks (skimage `polygon2mask` pixels), region crops.
//! - [`cli`]: the `cellpose-train-worker` subcommands.
//! - [`control`]: the one stop value (cancel / shutdown) passed down to every stage.
//! - [`telemetry`]: tracing set-up, blocking work inside the caller's span.
//! - [`redact`]: the one redaction of secrets (URL passwords, credential query values, tokens and
//!   keys) applied to everything that leaves the process.
//! - [`tool`]: NimbusImage's two retrain tools, each a model family.
pub mod annotations;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod device;
pub mod evaluate;
pub mod export;
pub mod girder;
pub mod imageio;
pub mod job;
pub mod limits;
pub mod mock_girder;
pub mod model;
pub mod numpy;
pub mod pickle;
pub mod precision;
pub mod predict;
pub mod predict_cpsam;
pub mod rasterize;
pub mod redact;
pub mod report;
pub mod segment;
pub mod synthetic;
pub mod telemetry;
pub mod tool;
pub mod train;
pub mod transforms;
pub mod worker;
