//! The epoch loop of cellpose 3.1.1.2 `train_seg`: LR schedule, optimizer, augmented batches,
//! `_loss_fn_seg`, test loss at epoch 5 and every 10th epoch, `save_every` / `save_each`, a final
//! save, and `diam_labels` stored in the model. Progress and cancellation hooks let the CLI draw a
//! progress bar and the worker report to Girder, checkpoint, and stop within one step.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Kind};

use super::batches::{self, BatchPlan};
use super::data::Example;
use super::loss::seg_loss;
use super::optim::{Optimizer, OptimizerKind};
use super::schedule::lr_schedule;
use super::step::Stepper;
use crate::control::{Control, StopReason};
use crate::model::{Model, ModelError};

pub(crate) use super::state::Start;
pub use super::state::{Resume, TrainState};

/// Everything `train_seg` takes besides the data.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub optimizer: OptimizerKind,
    pub n_epochs: usize,
    pub batch_size: usize,
    /// Patch size; a multiple of 16.
    pub bsize: usize,
    pub nimg_per_epoch: Option<usize>,
    pub nimg_test_per_epoch: Option<usize>,
    /// Rescale images by diameter / diam_mean (cellpose `rescale`); false keeps their size.
    pub rescale: bool,
    /// Augmentation scale range; `None` = cellpose's (0.5 when rescaling, else 1.0).
    pub scale_range: Option<f64>,
    /// Where the model is saved (final and `save_every`); `None` = not saved by the trainer.
    pub save_path: Option<PathBuf>,
    pub save_every: usize,
    /// Keep every periodic save as `<name>_epoch_NNNN` instead of overwriting.
    pub save_each: bool,
    pub seed: u64,
    pub device: Device,
    /// Run convolutions in bfloat16 (GPU); weights and optimizer stay float32.
    pub mixed_precision: bool,
    /// Channels-last (NHWC) activations and conv weights: cuDNN's native layout on GPUs.
    pub channels_last: bool,
    /// Let cuDNN benchmark convolution algorithms (shapes are fixed, so once).
    pub cudnn_benchmark: bool,
    /// Capture the training step as a CUDA graph and replay it (CUDA only).
    pub cuda_graphs: bool,
    /// Log per-phase host times (with a device sync) of every eager step: for profiling only.
    pub profile_steps: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            learning_rate: 0.005,
            weight_decay: 1e-5,
            optimizer: OptimizerKind::Adamw,
            n_epochs: 2000,
            batch_size: 8,
            bsize: 224,
            nimg_per_epoch: None,
            nimg_test_per_epoch: None,
            rescale: true,
            scale_range: None,
            save_path: None,
            save_every: 100,
            save_each: false,
            seed: 0,
            device: Device::Cpu,
            mixed_precision: false,
            channels_last: false,
            cudnn_benchmark: true,
            cuda_graphs: true,
            profile_steps: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training option: {0}")]
    Config(String),
    #[error("no training images")]
    NoData,
    #[error("training was cancelled during epoch {epoch}")]
    Cancelled { epoch: usize },
    #[error("training was stopped on request before step {step} of epoch {epoch} (state saved)")]
    Interrupted { epoch: usize, step: usize },
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
    pub lr: f64,
    pub elapsed_s: f64,
    pub eta_s: f64,
    pub seconds_per_step: f64,
    /// Wall seconds of this epoch: its steps and, when computed, its test loss.
    pub seconds: f64,
}

/// What the caller can observe and do during training.
pub trait TrainHooks {
    fn on_step(&mut self, _info: &StepInfo) {}
    /// Called after each epoch with the model and the state to resume from after it (e.g. to
    /// checkpoint). An error stops training.
    fn on_epoch(
        &mut self,
        _info: &EpochInfo,
        _model: &Model,
        _optim: &Optimizer,
        _state: &TrainState,
    ) -> Result<(), TrainError> {
        Ok(())
    }
    /// Called when the trainer saved the model file.
    fn on_saved(&mut self, _path: &std::path::Path, _epoch: usize) {}
    /// Called once when stopping for a shutdown ([`StopReason::Shutdown`]), before the step
    /// that would have run next, with everything needed to resume exactly.
    fn on_interrupt(&mut self, _model: &Model, _optim: &Optimizer, _state: &TrainState) {}
}

/// No-op hooks.
pub struct NoHooks;
impl TrainHooks for NoHooks {}

/// Result of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainOutcome {
    pub model_path: Option<PathBuf>,
    pub train_losses: Vec<f64>,
    pub test_losses: Vec<Option<f64>>,
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
}

/// Largest training patch side accepted: 1024 x 1024 patches in a batch of 8 already need ~1 GB
/// per activation map at 32 channels; larger ones cannot fit in memory and are certainly a typo.
pub const MAX_BSIZE: usize = 1024;

/// Checks the options [`train_seg`] would refuse, so callers can do it before touching any file.
pub fn validate_config(cfg: &TrainConfig) -> Result<(), TrainError> {
    let bad = |m: String| Err(TrainError::Config(m));
    if cfg.bsize == 0 || !cfg.bsize.is_multiple_of(16) {
        return bad(format!("bsize must be a positive multiple of 16 (got {})", cfg.bsize));
    }
    if cfg.bsize > MAX_BSIZE {
        return bad(format!(
            "bsize {} is larger than {MAX_BSIZE}; a training patch of that size needs tens of GB per step \
             (cellpose trains on 224, Cellpose-SAM on 256)",
            cfg.bsize
        ));
    }
    if cfg.batch_size == 0 {
        return bad("batch_size must be at least 1".into());
    }
    if cfg.n_epochs == 0 {
        return bad("n_epochs must be at least 1".into());
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return bad(format!("learning_rate must be a positive number (got {})", cfg.learning_rate));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return bad(format!("weight_decay must be >= 0 (got {})", cfg.weight_decay));
    }
    if cfg.save_every == 0 {
        return bad("save_every must be at least 1".into());
    }
    crate::limits::training(
        cfg.n_epochs,
        cfg.batch_size,
        cfg.bsize,
        cfg.nimg_per_epoch,
        cfg.nimg_test_per_epoch,
    )
    .map_err(|e| TrainError::Config(e.to_string()))
}

/// Trains `model` in place on `train` (and reports loss on `test`), like cellpose `train_seg`.
pub fn train_seg(
    model: &Model,
    train: Arc<Vec<Example>>,
    test: Option<Arc<Vec<Example>>>,
    cfg: &TrainConfig,
    hooks: &mut dyn TrainHooks,
    control: &Control,
    resume: Option<Resume>,
) -> Result<TrainOutcome, TrainError> {
    validate_config(cfg)?;
    if train.is_empty() {
        return Err(TrainError::NoData);
    }
    let t0 = Instant::now();
    let net = &model.net;
    let nchan = train[0].image.dim().0 as i64;
    model.check_io(nchan, net.config.nout, "the model being trained")?;
    let diam_mean = net.diam_mean();
    let diam_labels = train.iter().map(|e| e.diameter).sum::<f64>() / train.len() as f64;
    net.set_diam_labels(diam_labels).map_err(|e| TrainError::Config(e.to_string()))?;

    let scale_range = cfg.scale_range.unwrap_or(if cfg.rescale { 0.5 } else { 1.0 });
    let plan = BatchPlan {
        batch_size: cfg.batch_size,
        bsize: cfg.bsize,
        per_epoch: cfg.nimg_per_epoch.unwrap_or(train.len()),
        scale_range,
        rescale: cfg.rescale,
        diam_mean,
        seed: cfg.seed,
        channels_last: cfg.channels_last,
        pin_for: cfg.device.is_cuda().then_some(cfg.device),
    };
    let test_batches = test.as_ref().filter(|t| !t.is_empty()).map(|t| {
        let tplan = BatchPlan { per_epoch: cfg.nimg_test_per_epoch.unwrap_or(t.len()), ..plan.clone() };
        batches::test_batches(t, &tplan)
    });
    let lr = lr_schedule(cfg.learning_rate, cfg.n_epochs);
    if cfg.channels_last {
        to_channels_last(model);
    }
    let mut optim = Optimizer::new(cfg.optimizer, model.vs.trainable_variables(), cfg.weight_decay);
    let steps_per_epoch = plan.per_epoch.div_ceil(cfg.batch_size);
    let Start {
        epoch: start,
        step: start_step,
        partial_epoch_loss: partial,
        mut train_losses,
        mut test_losses,
        mut epoch_seconds,
    } = Start::resuming(resume, &mut optim, cfg.n_epochs, steps_per_epoch)?;
    let compute = if cfg.mixed_precision { Kind::BFloat16 } else { Kind::Float };
    let (rx, producer) =
        batches::spawn_train_batches(train.clone(), plan.clone(), start, start_step, cfg.n_epochs)
            .map_err(|e| TrainError::Config(format!("could not start the batch thread: {e}")))?;
    let mut steps_done = 0usize;
    let mut steady: Option<(Instant, usize)> = None;
    let mut data_wait = 0.0f64;
    let mut stepper = Stepper::new(model, compute, cfg.device, cfg.cuda_graphs, cfg.profile_steps);
    if cfg.device.is_cuda() {
        // fixed patch shapes: let cuDNN time its algorithms once and keep the fastest
        tch::Cuda::cudnn_set_benchmark(cfg.cudnn_benchmark);
    }
    let train_t0 = Instant::now();
    let total_steps = (cfg.n_epochs - start) * steps_per_epoch - start_step;

    let result = (|| -> Result<(), TrainError> {
        for epoch in start..cfg.n_epochs {
            let lr_e = lr[epoch];
            let epoch_t0 = Instant::now();
            let _ = stepper.epoch_loss.fill_(if epoch == start { partial } else { 0.0 });
            let first_step = if epoch == start { start_step } else { 0 };
            for step in first_step..steps_per_epoch {
                // checked before every step: a cancel or a shutdown waits for one step at most
                match control.reason() {
                    None => {}
                    Some(StopReason::Cancel) => return Err(TrainError::Cancelled { epoch }),
                    Some(StopReason::Shutdown) => {
                        let state = TrainState::at(
                            epoch,
                            step,
                            optim.steps,
                            stepper.epoch_loss.double_value(&[]),
                            &train_losses,
                            &test_losses,
                            &epoch_seconds,
                        );
                        hooks.on_interrupt(model, &optim, &state);
                        return Err(TrainError::Interrupted { epoch, step });
                    }
                }
                let wait_t0 = Instant::now();
                let batch = rx
                    .recv()
                    .map_err(|_| TrainError::Config("the batch producer stopped unexpectedly".into()))?;
                data_wait += wait_t0.elapsed().as_secs_f64();
                stepper.step(&mut optim, &batch, lr_e, cfg.batch_size as i64)?;
                steps_done += 1;
                let elapsed = train_t0.elapsed().as_secs_f64();
                let per_step = elapsed / steps_done as f64;
                hooks.on_step(&StepInfo {
                    epoch,
                    n_epochs: cfg.n_epochs,
                    step,
                    steps_per_epoch,
                    lr: lr_e,
                    elapsed_s: t0.elapsed().as_secs_f64(),
                    eta_s: per_step * (total_steps - steps_done) as f64,
                });
            }
            let train_loss = stepper.epoch_loss.double_value(&[]) / plan.per_epoch as f64;
            if !train_loss.is_finite() {
                return Err(TrainError::Diverged { epoch, value: train_loss });
            }
            train_losses[epoch] = train_loss;
            if epoch == start {
                // the loss read above synchronised the device: warm-up ends here
                steady = Some((Instant::now(), steps_done));
            }
            if epoch == 5 || epoch % 10 == 0 {
                if let Some(tb) = &test_batches {
                    test_losses[epoch] = Some(test_loss(model, tb, cfg.device, compute)?);
                }
            }
            // the loss reads above synchronised the device: the epoch's work is done
            epoch_seconds[epoch] = epoch_t0.elapsed().as_secs_f64();
            let elapsed = train_t0.elapsed().as_secs_f64();
            let per_step = elapsed / steps_done.max(1) as f64;
            let info = EpochInfo {
                epoch,
                n_epochs: cfg.n_epochs,
                train_loss,
                test_loss: test_losses[epoch],
                lr: lr_e,
                elapsed_s: t0.elapsed().as_secs_f64(),
                eta_s: per_step * (total_steps - steps_done) as f64,
                seconds_per_step: per_step,
                seconds: epoch_seconds[epoch],
            };
            tracing::debug!(epoch, train_loss, test_loss = ?info.test_loss, lr = lr_e, "epoch done");
            let state =
                TrainState::at(epoch + 1, 0, optim.steps, 0.0, &train_losses, &test_losses, &epoch_seconds);
            hooks.on_epoch(&info, model, &optim, &state)?;
            let last = epoch == cfg.n_epochs - 1;
            if let Some(path) = &cfg.save_path {
                if !last && epoch % cfg.save_every == 0 && epoch != 0 {
                    let p = if cfg.save_each { epoch_path(path, epoch) } else { path.clone() };
                    match model.save(&p) {
                        Ok(()) => hooks.on_saved(&p, epoch),
                        // a failed periodic save is logged, not fatal: the final save still counts
                        Err(e) => {
                            tracing::warn!(error = %e, path = %p.display(), "periodic model save failed")
                        }
                    }
                }
            }
        }
        Ok(())
    })();
    drop(rx);
    let _ = producer.join();
    result?;
    if let Some(path) = &cfg.save_path {
        model.save(path)?;
        hooks.on_saved(path, cfg.n_epochs - 1);
    }
    let train_secs = train_t0.elapsed().as_secs_f64();
    Ok(TrainOutcome {
        model_path: cfg.save_path.clone(),
        train_losses,
        test_losses,
        epoch_seconds,
        diam_labels,
        seconds: t0.elapsed().as_secs_f64(),
        seconds_per_step: train_secs / steps_done.max(1) as f64,
        steady_step_seconds: match steady {
            Some((t, n)) if steps_done > n => t.elapsed().as_secs_f64() / (steps_done - n) as f64,
            _ => train_secs / steps_done.max(1) as f64,
        },
        data_wait_seconds: data_wait,
    })
}

/// Re-lays every 4-D weight (convolutions) channels-last; values and names are unchanged.
fn to_channels_last(model: &Model) {
    tch::no_grad(|| {
        for mut v in model.vs.trainable_variables() {
            if v.dim() == 4 {
                let cl = v.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                v.set_data(&cl);
            }
        }
    });
}

/// `<path>_epoch_NNNN`, cellpose's `save_each` naming.
pub fn epoch_path(path: &std::path::Path, epoch: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!("_epoch_{epoch:04}"));
    PathBuf::from(s)
}

/// Mean loss over the (fixed) test batches in eval mode.
fn test_loss(
    model: &Model,
    batches: &[batches::Batch],
    device: Device,
    compute: Kind,
) -> Result<f64, TrainError> {
    tch::no_grad(|| {
        let mut sum = 0.0;
        let mut n = 0usize;
        for b in batches {
            let x = b.x.to_device(device);
            let y = b.y.to_device(device);
            let failed = |e| TrainError::step_failed(&x, e);
            let out = model.net.forward_mixed(&x, false, compute).map_err(failed)?;
            let bs = x.size()[0] as usize;
            sum += seg_loss(&out.maps, &y).map_err(failed)?.double_value(&[]) * bs as f64;
            n += bs;
        }
        Ok(sum / n.max(1) as f64)
    })
}
