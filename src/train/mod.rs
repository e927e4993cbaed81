//! Training that behaves like cellpose 3.1.1.2 `train_seg`: data preparation ([`data`]), label ->
//! flow targets ([`flows`], with cellpose's CUDA variant in [`flows_torch`]), object diameters
//! ([`diameters`]), augmentation ([`augment`]) on a producer thread ([`batches`]), losses
//! ([`loss`]), optimizers ([`optim`]), the LR schedule ([`schedule`]) and the epoch loop ([`trainer`]).
//! Cellpose-SAM models train with cellpose 4.2.1.1's semantics in [`cpsam`].
pub mod augment;
pub mod batches;
pub mod checkpoint;
pub mod cpsam;
pub mod cuda_graph;
pub mod data;
pub mod diameters;
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
pub use optim::{Optimizer, OptimizerKind};
pub use trainer::{
    train_seg, validate_config, EpochInfo, NoHooks, Resume, StepInfo, TrainConfig, TrainError, TrainHooks,
    TrainOutcome, TrainState,
};
