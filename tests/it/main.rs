//! One integration-test binary; a file per capability. Shared set-up lives in `helpers`.
mod annotations;
mod helpers;
mod model_files;
mod predict;
mod rasterize;
