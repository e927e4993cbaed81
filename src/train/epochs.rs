//! The one epoch loop of both families, after burn-train's `Learner`: the family supplies its
//! batches and its step ([`TrainStep`]); the loop owns everything else, written once: the stop
//! check before every step, progress and ETA, the learning rate of each epoch, the test loss at
//! cellpose's cadence (epoch 5 and every 10th), the hooks (metrics, best model, checkpoints),
//! periodic and final saves, and the [`TrainOutcome`].
//!
//! cellpose 3.1.1.2 and 4.2.1.1 `train_seg` share this loop to the letter; they differ in the
//! schedule (each family passes its own), the batches and the step.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{TchError, Tensor};

use super::error::TrainError;
use super::loss::seg_loss;
use super::optim::Optimizer;
use super::state::{Start, TrainState};
use crate::control::{Control, StopReason};
use crate::model::ModelError;

/// Progress after each step.
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub epoch: usize,
    pub n_epochs: usize,
    pub step: usize,
    pub steps_per_epoch: usize,
    pub lr: f64,
    pub elapsed_s: f64,
    pub eta_s: f64,
}

/// Summary after each epoch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochInfo {
    pub epoch: usize,
    pub n_epochs: usize,
    /// Mean training loss over the epoch's images (cellpose `train_losses[iepoch]`).
    pub train_loss: f64,
    /// Test loss when evaluated this epoch (epoch 5 and every 10th).
    pub test_loss: Option<f64>,
    /// The learning rate this epoch trained with.
    pub lr: f64,
    pub elapsed_s: f64,
    pub eta_s: f64,
    pub seconds_per_step: f64,
    /// Wall seconds of this epoch: its steps and, when computed, its test loss.
    pub seconds: f64,
    /// `"fp32"` or `"bf16-mixed"` ([`crate::precision::Precision::label`]).
    pub precision: &'static str,
}

/// What the caller can observe and do during training of a model `M` (either family's).
pub trait TrainHooks<M = crate::model::Model> {
    fn on_step(&mut self, _info: &StepInfo) {}
    /// Called after each epoch with the model and the state to resume from after it (e.g. to
    /// checkpoint). An error stops training.
    fn on_epoch(
        &mut self,
        _info: &EpochInfo,
        _model: &M,
        _optim: &Optimizer,
        _state: &TrainState,
    ) -> Result<(), TrainError> {
        Ok(())
    }
    /// Called when the loop saved the model file.
    fn on_saved(&mut self, _path: &Path, _epoch: usize) {}
    /// Called once when stopping for a shutdown ([`StopReason::Shutdown`]), before the step
    /// that would have run next, with everything needed to resume exactly.
    fn on_interrupt(&mut self, _model: &M, _optim: &Optimizer, _state: &TrainState) {}
}

/// No-op hooks, for either family.
pub struct NoHooks;
impl<M> TrainHooks<M> for NoHooks {}

/// Result of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainOutcome {
    pub model_path: Option<PathBuf>,
    pub train_losses: Vec<f64>,
    pub test_losses: Vec<Option<f64>>,
    /// The learning rate of every epoch, as the loop set it: the family's schedule (a resumed
    /// run's earlier epochs ran on the same one, a pure function of the rate and the epochs).
    pub learning_rates: Vec<f64>,
    /// Wall seconds of each epoch (a resumed run keeps the earlier runs' figures).
    pub epoch_seconds: Vec<f64>,
    pub diam_labels: f64,
    pub seconds: f64,
    pub seconds_per_step: f64,
    /// Mean wall time per step after the first epoch (warm-up excluded), measured between
    /// epoch ends, where the loss read synchronises the device: the honest figure for benchmarks
    /// (per-step host times mean nothing once transfers and kernels run asynchronously).
    pub steady_step_seconds: f64,
    /// Time the training loop waited for augmented batches (should be ~0: data ready in advance).
    pub data_wait_seconds: f64,
    /// `"fp32"` or `"bf16-mixed"`: the precision the steps ran in.
    pub precision: &'static str,
}

/// One family's part of a run, after burn-train's `TrainStep`: its batches and its optimizer
/// step (the loop holds the network and the optimizer). The loop calls it in order:
/// `begin_epoch`, then `step` for each step of the epoch, then `loss_sum` and, at cellpose's
/// cadence, `test_loss`.
pub(crate) trait TrainStep {
    type Model;
    /// Starts `epoch` at step `first` (a resumed run skips the steps done before its
    /// checkpoint), with `loss_sum` (loss x batch size) of those steps already summed.
    fn begin_epoch(&mut self, epoch: usize, first: usize, loss_sum: f64) -> Result<(), TrainError>;
    /// One step of `optim` on batch `step` of `epoch` at learning rate `lr`, its loss x batch
    /// size added to the epoch's sum.
    fn step(&mut self, optim: &mut Optimizer, epoch: usize, step: usize, lr: f64) -> Result<(), TrainError>;
    /// The epoch's loss sum so far (a read that synchronises the device).
    fn loss_sum(&self) -> f64;
    /// Mean loss on the test batches, in eval mode; `None` without a test set.
    fn test_loss(&self) -> Result<Option<f64>, TrainError>;
    fn save(&self, path: &Path) -> Result<(), ModelError>;
    /// Seconds spent waiting for batches (a family that makes them on its own thread).
    fn data_wait_seconds(&self) -> f64 {
        0.0
    }
}

/// What the loop runs: epochs, their steps and rates, and where the model is saved.
pub(crate) struct Run<'a> {
    pub n_epochs: usize,
    pub steps_per_epoch: usize,
    /// Images per epoch: the epoch's loss sum is divided by it (cellpose's mean per image).
    pub images_per_epoch: usize,
    /// The learning rate of each epoch, `n_epochs` long (the family's schedule).
    pub lr: Vec<f64>,
    pub saves: Option<Saves<'a>>,
    /// `"fp32"` or `"bf16-mixed"`, for the epoch lines and the outcome.
    pub precision: &'static str,
    /// Mean training diameter, reported in the outcome.
    pub diam_labels: f64,
    /// When the run began (its setup included), for the outcome's and the hooks' times.
    pub t0: Instant,
}

/// Where the model is saved: every `every` epochs (overwriting, or as `<path>_epoch_NNNN` with
/// `each`) and after the last.
pub(crate) struct Saves<'a> {
    pub path: &'a Path,
    pub every: usize,
    pub each: bool,
}

/// The options every run needs, whatever the family (each family's config check adds its own).
pub(crate) fn check_run_options(
    batch_size: usize,
    n_epochs: usize,
    learning_rate: f64,
    weight_decay: f64,
    save_every: usize,
) -> Result<(), TrainError> {
    let bad = |m: String| Err(TrainError::Config(m));
    if batch_size == 0 {
        return bad("batch_size must be at least 1".into());
    }
    if n_epochs == 0 {
        return bad("n_epochs must be at least 1".into());
    }
    if !(learning_rate.is_finite() && learning_rate > 0.0) {
        return bad(format!("learning_rate must be a positive number (got {learning_rate})"));
    }
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        return bad(format!("weight_decay must be >= 0 (got {weight_decay})"));
    }
    if save_every == 0 {
        return bad("save_every must be at least 1".into());
    }
    Ok(())
}

/// cellpose's cadence for the test loss and its log line: after epoch 5 and every 10th (0-based).
pub(crate) fn cellpose_reports_at(epoch: usize) -> bool {
    epoch == 5 || epoch.is_multiple_of(10)
}

/// Mean loss over test batches `(x, y)`, each forwarded by `forward` in eval mode without
/// gradients, weighted by batch size.
pub(crate) fn mean_test_loss(
    batches: impl IntoIterator<Item = (Tensor, Tensor)>,
    forward: impl Fn(&Tensor) -> Result<Tensor, TchError>,
) -> Result<f64, TrainError> {
    tch::no_grad(|| {
        let (mut sum, mut n) = (0.0, 0usize);
        for (x, y) in batches {
            let failed = |e| TrainError::step_failed(&x, e);
            let bs = x.size()[0] as usize;
            sum += seg_loss(&forward(&x).map_err(failed)?, &y).map_err(failed)?.double_value(&[]) * bs as f64;
            n += bs;
        }
        Ok(sum / n.max(1) as f64)
    })
}

/// Runs the epochs of `run`: `model` trained by `optim` with `family`'s batches and step, from
/// `resume` when given.
pub(crate) fn fit<S: TrainStep>(
    family: &mut S,
    (model, mut optim): (&S::Model, Optimizer),
    run: Run<'_>,
    hooks: &mut dyn TrainHooks<S::Model>,
    control: &Control,
    resume: Option<super::state::Resume>,
) -> Result<TrainOutcome, TrainError> {
    let (n_epochs, steps_per_epoch) = (run.n_epochs, run.steps_per_epoch);
    let Start {
        epoch: start,
        step: start_step,
        partial_epoch_loss: partial,
        mut train_losses,
        mut test_losses,
        mut epoch_seconds,
    } = Start::resuming(resume, &mut optim, n_epochs, steps_per_epoch)?;
    let total_steps = (n_epochs - start) * steps_per_epoch - start_step;
    let mut steps_done = 0usize;
    let mut steady: Option<(Instant, usize)> = None;
    let train_t0 = Instant::now();
    let eta = |steps_done: usize| train_t0.elapsed().as_secs_f64() / steps_done.max(1) as f64;
    for epoch in start..n_epochs {
        let lr = run.lr[epoch];
        let epoch_t0 = Instant::now();
        let first = if epoch == start { start_step } else { 0 };
        family.begin_epoch(epoch, first, if epoch == start { partial } else { 0.0 })?;
        for step in first..steps_per_epoch {
            // checked before every step: a cancel or a shutdown waits for one step at most
            if let Some(reason) = control.reason() {
                if reason == StopReason::Shutdown {
                    let state = TrainState::at(
                        epoch,
                        step,
                        optim.steps,
                        family.loss_sum(),
                        &train_losses,
                        &test_losses,
                        &epoch_seconds,
                    );
                    hooks.on_interrupt(model, &optim, &state);
                }
                return Err(TrainError::Stopped { reason, epoch, step });
            }
            family.step(&mut optim, epoch, step, lr)?;
            steps_done += 1;
            hooks.on_step(&StepInfo {
                epoch,
                n_epochs,
                step,
                steps_per_epoch,
                lr,
                elapsed_s: run.t0.elapsed().as_secs_f64(),
                eta_s: eta(steps_done) * (total_steps - steps_done) as f64,
            });
        }
        let train_loss = family.loss_sum() / run.images_per_epoch as f64;
        if !train_loss.is_finite() {
            return Err(TrainError::Diverged { epoch, value: train_loss });
        }
        train_losses[epoch] = train_loss;
        if epoch == start {
            // the loss read above synchronised the device: warm-up ends here
            steady = Some((Instant::now(), steps_done));
        }
        if cellpose_reports_at(epoch) {
            test_losses[epoch] = family.test_loss()?;
        }
        // the loss reads above synchronised the device: the epoch's work is done
        epoch_seconds[epoch] = epoch_t0.elapsed().as_secs_f64();
        let per_step = eta(steps_done);
        let info = EpochInfo {
            epoch,
            n_epochs,
            train_loss,
            test_loss: test_losses[epoch],
            lr,
            elapsed_s: run.t0.elapsed().as_secs_f64(),
            eta_s: per_step * (total_steps - steps_done) as f64,
            seconds_per_step: per_step,
            seconds: epoch_seconds[epoch],
            precision: run.precision,
        };
        tracing::debug!(epoch, train_loss, test_loss = ?info.test_loss, lr, "epoch done");
        let state =
            TrainState::at(epoch + 1, 0, optim.steps, 0.0, &train_losses, &test_losses, &epoch_seconds);
        hooks.on_epoch(&info, model, &optim, &state)?;
        let last = epoch == n_epochs - 1;
        if let Some(saves) = run.saves.as_ref().filter(|s| !last && epoch != 0 && epoch % s.every == 0) {
            let p = if saves.each { epoch_path(saves.path, epoch) } else { saves.path.to_path_buf() };
            match family.save(&p) {
                Ok(()) => hooks.on_saved(&p, epoch),
                // a failed periodic save is logged, not fatal: the final save still counts
                Err(e) => tracing::warn!(error = %e, path = %p.display(), "periodic model save failed"),
            }
        }
    }
    if let Some(saves) = &run.saves {
        family.save(saves.path)?;
        hooks.on_saved(saves.path, n_epochs - 1);
    }
    let train_secs = train_t0.elapsed().as_secs_f64();
    Ok(TrainOutcome {
        model_path: run.saves.map(|s| s.path.to_path_buf()),
        train_losses,
        test_losses,
        learning_rates: run.lr,
        epoch_seconds,
        diam_labels: run.diam_labels,
        seconds: run.t0.elapsed().as_secs_f64(),
        seconds_per_step: train_secs / steps_done.max(1) as f64,
        steady_step_seconds: match steady {
            Some((t, n)) if steps_done > n => t.elapsed().as_secs_f64() / (steps_done - n) as f64,
            _ => train_secs / steps_done.max(1) as f64,
        },
        data_wait_seconds: family.data_wait_seconds(),
        precision: run.precision,
    })
}

/// `<path>_epoch_NNNN`, cellpose's `save_each` naming.
pub(crate) fn epoch_path(path: &Path, epoch: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!("_epoch_{epoch:04}"));
    PathBuf::from(s)
}
