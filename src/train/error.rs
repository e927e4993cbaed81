//! Why a training run stopped without a model: the caller branches on it (a stop ends a job as
//! its [`StopReason`] says, a bad option is the user's to fix, a diverged loss asks for a lower
//! learning rate).

use crate::control::StopReason;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training option: {0}")]
    Config(String),
    #[error("no training images")]
    NoData,
    /// Stopped before step `step` of epoch `epoch`, for `reason`; on a shutdown the hooks were
    /// handed the state to resume from first.
    #[error("training was stopped ({}) before step {step} of epoch {epoch}", reason.describe())]
    Stopped { reason: StopReason, epoch: usize, step: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the training loss became {value} at epoch {epoch}; lower the learning rate")]
    Diverged { epoch: usize, value: f64 },
    #[error("torch error: {0}")]
    Torch(#[from] tch::TchError),
    #[error(
        "a training step on {batch} patches of {patch}x{patch} pixels failed in libtorch: {detail}; \
         if it ran out of memory, lower the patch size (--bsize, [training] bsize) or the batch size"
    )]
    StepFailed { batch: i64, patch: i64, detail: String },
    #[error("CUDA graph replay failed: {0}")]
    Cuda(String),
}

impl TrainError {
    /// A failed forward/backward on batch `x` (`[B, C, H, W]`); keeps libtorch's first line only
    /// (the rest is a C++ backtrace).
    pub(crate) fn step_failed(x: &tch::Tensor, e: tch::TchError) -> Self {
        let size = x.size();
        let detail = e.to_string().lines().next().unwrap_or("").trim().to_string();
        TrainError::StepFailed { batch: size[0], patch: size.get(2).copied().unwrap_or(0), detail }
    }
}
