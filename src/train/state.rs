//! Where a training run stands and where it starts: the state a checkpoint carries
//! ([`TrainState`]), a resume point of either family ([`Resume`]), and the checked starting point both
//! families' loops begin from ([`Start`]).

use tch::Tensor;

use super::error::TrainError;
use super::optim::Optimizer;

/// Where a run stands: enough, with the weights and optimizer state, to continue it exactly
/// (batches are a pure function of seed, epoch and step).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// The next epoch to run.
    pub epoch: usize,
    /// The next step within that epoch (0 at an epoch boundary).
    pub step: usize,
    pub optimizer_steps: i64,
    /// Sum of loss x batch size over the steps of `epoch` already done.
    pub partial_epoch_loss: f64,
    pub train_losses: Vec<f64>,
    pub test_losses: Vec<Option<f64>>,
    /// Wall seconds of each epoch done (0 where unknown: checkpoints written before this field).
    #[serde(default)]
    pub epoch_seconds: Vec<f64>,
}

impl TrainState {
    /// The state before step `step` of `epoch`: the curves of the epochs done (the first
    /// `epoch` entries) and `partial_epoch_loss` of the steps of `epoch` already done.
    pub fn at(
        epoch: usize,
        step: usize,
        optimizer_steps: i64,
        partial_epoch_loss: f64,
        train_losses: &[f64],
        test_losses: &[Option<f64>],
        epoch_seconds: &[f64],
    ) -> TrainState {
        TrainState {
            epoch,
            step,
            optimizer_steps,
            partial_epoch_loss,
            train_losses: train_losses[..epoch].to_vec(),
            test_losses: test_losses[..epoch].to_vec(),
            epoch_seconds: epoch_seconds[..epoch].to_vec(),
        }
    }
}

/// Continue from a saved state (the model's weights must already be loaded).
pub struct Resume {
    pub state: TrainState,
    pub optimizer_state: Vec<(String, Tensor)>,
}

/// Where a run starts, with the curves so far sized to the run's epochs: epoch 0 for a fresh
/// run, the checkpoint's point for a resumed one.
pub(crate) struct Start {
    pub epoch: usize,
    pub step: usize,
    /// Loss x batch size summed over the steps of `epoch` already done.
    pub partial_epoch_loss: f64,
    pub train_losses: Vec<f64>,
    pub test_losses: Vec<Option<f64>>,
    pub epoch_seconds: Vec<f64>,
}

impl Start {
    /// Where a run with `optim` starts: [`Start::from`] the resume's state, whose optimizer
    /// state then goes into `optim` (nothing is loaded when the point is refused).
    pub(crate) fn resuming(
        resume: Option<Resume>,
        optim: &mut Optimizer,
        n_epochs: usize,
        steps_per_epoch: usize,
    ) -> Result<Start, TrainError> {
        let Some(r) = resume else { return Start::from(None, n_epochs, steps_per_epoch) };
        let steps = r.state.optimizer_steps;
        let start = Start::from(Some(r.state), n_epochs, steps_per_epoch)?;
        optim.load_state_tensors(&r.optimizer_state, steps);
        Ok(start)
    }

    /// From a checkpoint's state (or none), refusing a point this run does not have: a
    /// checkpoint of another job or a crafted one must fail here, not index past the plan.
    pub(crate) fn from(
        state: Option<TrainState>,
        n_epochs: usize,
        steps_per_epoch: usize,
    ) -> Result<Start, TrainError> {
        let s = state.unwrap_or_default();
        if s.epoch >= n_epochs {
            return Err(TrainError::Config(format!(
                "resume point epoch {} is past the last epoch ({n_epochs})",
                s.epoch
            )));
        }
        if s.step >= steps_per_epoch.max(1) {
            return Err(TrainError::Config(format!(
                "resume point step {} is past the {steps_per_epoch} steps of an epoch; the checkpoint is not this job's",
                s.step
            )));
        }
        let mut start = Start {
            epoch: s.epoch,
            step: s.step,
            partial_epoch_loss: s.partial_epoch_loss,
            train_losses: s.train_losses,
            test_losses: s.test_losses,
            epoch_seconds: s.epoch_seconds,
        };
        start.train_losses.resize(n_epochs, 0.0);
        start.test_losses.resize(n_epochs, None);
        start.epoch_seconds.resize(n_epochs, 0.0);
        Ok(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_run_starts_at_zero_with_curves_sized_to_the_run() {
        let s = Start::from(None, 4, 3).unwrap();
        assert_eq!((s.epoch, s.step, s.partial_epoch_loss), (0, 0, 0.0));
        assert_eq!((s.train_losses.len(), s.test_losses.len(), s.epoch_seconds.len()), (4, 4, 4));
    }

    #[test]
    fn a_resume_point_the_run_does_not_have_is_refused() {
        let at =
            |epoch, step| TrainState { epoch, step, train_losses: vec![1.0; epoch], ..Default::default() };
        let s = Start::from(Some(at(2, 1)), 4, 3).unwrap();
        assert_eq!((s.epoch, s.step, s.train_losses[..2].to_vec()), (2, 1, vec![1.0, 1.0]));
        let msg = Start::from(Some(at(4, 0)), 4, 3).err().unwrap().to_string();
        assert!(msg.contains("epoch 4 is past the last epoch (4)"), "{msg}");
        let msg = Start::from(Some(at(1, 3)), 4, 3).err().unwrap().to_string();
        assert!(msg.contains("step 3 is past the 3 steps") && msg.contains("not this job's"), "{msg}");
    }
}
