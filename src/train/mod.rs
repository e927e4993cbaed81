//! Training as cellpose 3.1.1.2 `train_seg` does it: label -> flow targets ([`flows`], with the
//! torch variant cellpose uses on CUDA in [`flows_torch`]) and object diameters ([`diameters`]).
pub mod diameters;
pub mod flows;
pub mod flows_torch;
