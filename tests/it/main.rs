//! One integration-test binary; a file per capability. Shared set-up lives in `helpers`.
mod annotations;
mod girder_annotations;
mod girder_cli;
mod girder_contract;
mod girder_files;
mod girder_jobs;
mod girder_numpy;
mod girder_python;
mod girder_seed;
mod girder_tiles;
mod helpers;
mod model_files;
mod predict;
mod rasterize;
mod train;
mod train_golden;
