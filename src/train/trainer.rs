//! CPnet training with cellpose 3.1.1.2 `train_seg` semantics: its options ([`TrainConfig`],
//! with `train_seg`'s defaults), its schedule ([`super::schedule`]), and its part of the one
//! epoch loop ([`super::epochs`]): augmented batches made ahead on a producer thread
//! ([`super::batches`]) and the step of [`super::step`] (eager, or replayed as a CUDA graph),
//! the loss summed on the device; `diam_labels` stored in the model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::batches::{self, Batch, BatchPlan, Producer};
use super::data::Example;
use super::epochs::{self, check_run_options, Run, Saves, TrainHooks, TrainOutcome, TrainStep};
use super::error::TrainError;
use super::optim::{Optimizer, OptimizerKind};
use super::schedule::lr_schedule;
use super::state::Resume;
use super::step::Stepper;
use crate::control::Control;
use crate::model::{Model, ModelError};

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

/// Largest training patch side accepted: 1024 x 1024 patches in a batch of 8 already need ~1 GB
/// per activation map at 32 channels; larger ones cannot fit in memory and are certainly a typo.
pub(crate) const MAX_BSIZE: usize = 1024;

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
    check_run_options(cfg.batch_size, cfg.n_epochs, cfg.learning_rate, cfg.weight_decay, cfg.save_every)?;
    crate::limits::training(
        cfg.n_epochs,
        cfg.batch_size,
        cfg.bsize,
        cfg.nimg_per_epoch,
        cfg.nimg_test_per_epoch,
    )
    .map_err(|e| TrainError::Config(e.to_string()))
}

/// Trains `model` in place on `train` (and reports loss on `test`), like cellpose `train_seg`;
/// with `resume` (its weights already in `model`) it continues where the checkpoint stopped.
pub fn train_seg(
    model: &Model,
    train: Arc<Vec<Example>>,
    test: Option<Arc<Vec<Example>>>,
    cfg: &TrainConfig,
    hooks: &mut dyn TrainHooks<Model>,
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
    let diam_labels = train.iter().map(|e| e.diameter).sum::<f64>() / train.len() as f64;
    net.set_diam_labels(diam_labels).map_err(|e| TrainError::Config(e.to_string()))?;

    let scale_range = cfg.scale_range.unwrap_or(if cfg.rescale { 0.5 } else { 1.0 });
    let plan = BatchPlan {
        batch_size: cfg.batch_size,
        bsize: cfg.bsize,
        per_epoch: cfg.nimg_per_epoch.unwrap_or(train.len()),
        scale_range,
        rescale: cfg.rescale,
        diam_mean: net.diam_mean(),
        seed: cfg.seed,
        channels_last: cfg.channels_last,
        pin_for: cfg.device.is_cuda().then_some(cfg.device),
    };
    let test_batches = test.as_ref().filter(|t| !t.is_empty()).map(|t| {
        let tplan = BatchPlan { per_epoch: cfg.nimg_test_per_epoch.unwrap_or(t.len()), ..plan.clone() };
        batches::test_batches(t, &tplan)
    });
    if cfg.channels_last {
        to_channels_last(model);
    }
    let optim = Optimizer::new(cfg.optimizer, model.vs.trainable_variables(), cfg.weight_decay);
    let compute = if cfg.mixed_precision { Kind::BFloat16 } else { Kind::Float };
    let run = Run {
        n_epochs: cfg.n_epochs,
        steps_per_epoch: plan.per_epoch.div_ceil(cfg.batch_size),
        images_per_epoch: plan.per_epoch,
        lr: lr_schedule(cfg.learning_rate, cfg.n_epochs),
        saves: cfg.save_path.as_deref().map(|path| Saves {
            path,
            every: cfg.save_every,
            each: cfg.save_each,
        }),
        diam_labels,
        t0,
        precision: if cfg.mixed_precision { "bf16-mixed" } else { "fp32" },
    };
    let mut family = CpnetSteps {
        model,
        stepper: Stepper::new(model, compute, cfg.device, cfg.cuda_graphs, cfg.profile_steps),
        train,
        plan,
        n_epochs: cfg.n_epochs,
        batches: None,
        data_wait: 0.0,
        test_batches,
        device: cfg.device,
        compute,
    };
    if cfg.device.is_cuda() {
        // fixed patch shapes: let cuDNN time its algorithms once and keep the fastest
        tch::Cuda::cudnn_set_benchmark(cfg.cudnn_benchmark);
    }
    epochs::fit(&mut family, (model, optim), run, hooks, control, resume)
}

/// CPnet's part of the loop: batches from the producer thread, the [`Stepper`]'s step.
struct CpnetSteps<'a> {
    model: &'a Model,
    stepper: Stepper<'a>,
    train: Arc<Vec<Example>>,
    plan: BatchPlan,
    n_epochs: usize,
    /// Started at the first epoch the loop runs (a resumed run's point), stopped when dropped.
    batches: Option<Producer<Batch>>,
    data_wait: f64,
    test_batches: Option<Vec<Batch>>,
    device: Device,
    compute: Kind,
}

impl TrainStep for CpnetSteps<'_> {
    type Model = Model;

    fn begin_epoch(&mut self, epoch: usize, first: usize, loss_sum: f64) -> Result<(), TrainError> {
        if self.batches.is_none() {
            let (rx, thread) = batches::spawn_train_batches(
                self.train.clone(),
                self.plan.clone(),
                epoch,
                first,
                self.n_epochs,
            )
            .map_err(|e| TrainError::Config(format!("could not start the batch thread: {e}")))?;
            self.batches = Some(Producer::new(rx, thread));
        }
        let _ = self.stepper.epoch_loss.fill_(loss_sum);
        Ok(())
    }

    fn step(
        &mut self,
        optim: &mut Optimizer,
        _epoch: usize,
        _step: usize,
        lr: f64,
    ) -> Result<(), TrainError> {
        let wait_t0 = Instant::now();
        let batch = self
            .batches
            .as_ref()
            .and_then(|p| p.next())
            .ok_or_else(|| TrainError::Config("the batch producer stopped unexpectedly".into()))?;
        self.data_wait += wait_t0.elapsed().as_secs_f64();
        self.stepper.step(optim, &batch, lr, self.plan.batch_size as i64)
    }

    fn loss_sum(&self) -> f64 {
        self.stepper.epoch_loss.double_value(&[])
    }

    fn test_loss(&self) -> Result<Option<f64>, TrainError> {
        let Some(batches) = &self.test_batches else { return Ok(None) };
        let on_device = batches.iter().map(|b| (b.x.to_device(self.device), b.y.to_device(self.device)));
        let forward = |x: &Tensor| self.model.net.forward_mixed(x, false, self.compute).map(|out| out.maps);
        epochs::mean_test_loss(on_device, forward).map(Some)
    }

    fn save(&self, path: &Path) -> Result<(), ModelError> {
        self.model.save(path)
    }

    fn data_wait_seconds(&self) -> f64 {
        self.data_wait
    }
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
