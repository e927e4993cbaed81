//! Training with cellpose's `train_seg` semantics. One epoch loop serves both model families
//! ([`epochs`]: stop checks, progress, test loss, hooks, saves, the outcome); each family brings
//! its batches and its step: CPnet (cellpose 3.1.1.2) in [`trainer`], with data preparation
//! ([`data`]), label -> flow targets ([`flows`], with cellpose's CUDA variant in
//! [`flows_torch`]), object diameters ([`diameters`]), augmentation ([`augment`]) on a producer
//! thread ([`batches`]) and its LR schedule ([`schedule`]); Cellpose-SAM (cellpose 4.2.1.1) in
//! [`cpsam`]. Shared by both: losses ([`loss`]), optimizers ([`optim`]), where a run stands and
//! resumes from (`state`, [`checkpoint`]) and why it fails ([`TrainError`]).
pub mod augment;
pub mod batches;
pub mod checkpoint;
pub mod cpsam;
pub mod cuda_graph;
pub mod data;
pub mod diameters;
pub mod epochs;
mod error;
pub mod flows;
pub mod flows_torch;
pub mod loss;
pub mod optim;
pub mod schedule;
mod state;
mod step;
pub mod trainer;

pub use data::{
    discover, find_images, load_pairs, prepare, Example, Pair, PrepareOptions, Prepared, RawExample,
};
pub use epochs::{EpochInfo, NoHooks, StepInfo, TrainHooks, TrainOutcome};
pub use error::TrainError;
pub use optim::{Optimizer, OptimizerKind};
pub use state::{Resume, TrainState};
pub use trainer::{train_seg, validate_config, TrainConfig};
