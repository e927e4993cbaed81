//! Training of Cellpose-SAM (cpsam) models with cellpose 4.2.1.1 `train_seg` semantics: data
//! preparation ([`data`]), augmentation ([`augment`]), the LR schedule ([`schedule`]) and its
//! batches and step in the one epoch loop ([`trainer`]). The loss, the AdamW update and the
//! epoch sampling are the shared ones of [`crate::train`], where cellpose 4 behaves as cellpose 3.1.1.2.
pub mod augment;
pub mod checkpoint;
pub mod data;
pub mod schedule;
mod tiles;
pub mod trainer;

pub use augment::Cp4Augment;
pub use data::{prepare_cp4, reshape_norm_cp4, Cp4DataError, Cp4PrepareOptions};
pub use schedule::lr_schedule_cp4;
pub use trainer::{train_seg_cpsam, trained_parameters, validate_cpsam_config, CpsamTrainConfig};
