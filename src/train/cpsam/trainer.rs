//! Cellpose-SAM training with cellpose 4.2.1.1 `train_seg` semantics: its options
//! ([`CpsamTrainConfig`], with cellpose 4's defaults), its schedule ([`super::schedule`]), and
//! its part of the one epoch loop ([`crate::train::epochs`]): each step's augmented tiles
//! ([`super::tiles`]) and an AdamW step with the network's layer drop.
//!
//! What it keeps from cellpose 3.1.1.2 (the loop, and [`crate::train`]'s pieces): `_loss_fn_seg`,
//! the per-epoch permutation (or sampling with replacement when `nimg_per_epoch` differs from
//! the set size), test loss at epoch 5 and every 10th epoch on a fixed draw of test tiles, saves
//! every `save_every` epochs and at the end, `diam_labels` = mean training diameter.
//!
//! What differs: AdamW only (cellpose 4 ignores `SGD`; here it is refused so nobody believes
//! they got SGD), defaults lr 1e-5, weight decay 0.1, 100 epochs, batch 1; tiles of exactly the
//! network's 256 pixels; no rescaling by default and the rotation/scale augmentation of
//! [`super::augment`]; the LR tail from 100 epochs ([`super::schedule`]); the network in
//! training mode (layer drop) for training steps and eval mode for the test loss; fp32 weights
//! throughout (a bf16 file is loaded as fp32) and fp32 files saved, with the matrix products in
//! bf16 when `mixed_precision` is on (cellpose 4 always trains in fp32: off is the reference).
//!
//! Resumable like the CPnet loop: a checkpoint after any epoch, or before any step on a
//! shutdown, continues bit for bit. Why that holds: the augmentation stream of an epoch is a
//! pure function of seed and epoch (a resume mid-epoch replays the draws of the steps done), and
//! the layer drop of each step one of (seed, epoch, step) ([`super::tiles`]).
//!
//! The patch embedding takes no gradient (`CPSAM.forward` convolves with `proj.weight.data`),
//! so, as PyTorch's AdamW skips parameters without a gradient, it is neither updated nor decayed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::schedule::lr_schedule_cp4;
use super::tiles::{items, rng_for, Item, StepTiles, TilePlan, TileSource, TileStream, Tiles};
use crate::control::Control;
use crate::model::{CpsamModel, ModelError};
use crate::train::batches::epoch_order;
use crate::train::data::Example;
use crate::train::epochs::{self, check_run_options, Run, Saves, TrainHooks, TrainOutcome, TrainStep};
use crate::train::loss::seg_loss;
use crate::train::optim::{Optimizer, OptimizerKind};
use crate::train::{Resume, TrainError};

/// Everything cellpose 4 `train_seg` takes besides the data, with its defaults.
#[derive(Debug, Clone)]
pub struct CpsamTrainConfig {
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Must be AdamW (cellpose 4 always uses it).
    pub optimizer: OptimizerKind,
    pub n_epochs: usize,
    pub batch_size: usize,
    /// Tile size; `None` = the network's (256). Any other value is refused, as cellpose 4 does.
    pub bsize: Option<usize>,
    pub nimg_per_epoch: Option<usize>,
    pub nimg_test_per_epoch: Option<usize>,
    /// Zoom each image by diam_mean / its diameter first (cellpose 4 default: false).
    pub rescale: bool,
    /// Augmentation zoom range; `None` = 0.5 (cellpose 4 `train_seg`).
    pub scale_range: Option<f64>,
    pub save_path: Option<PathBuf>,
    pub save_every: usize,
    pub save_each: bool,
    pub seed: u64,
    pub device: Device,
    /// bf16 matrix products with float32 master weights, AdamW moments and saved file
    /// (cellpose 4 trains in float32: off reproduces it).
    pub mixed_precision: bool,
    /// Log each step's phases (batch, forward, backward, AdamW) with their host times.
    pub profile_steps: bool,
}

impl Default for CpsamTrainConfig {
    fn default() -> Self {
        CpsamTrainConfig {
            learning_rate: 1e-5,
            weight_decay: 0.1,
            optimizer: OptimizerKind::Adamw,
            n_epochs: 100,
            batch_size: 1,
            bsize: None,
            nimg_per_epoch: None,
            nimg_test_per_epoch: None,
            rescale: false,
            scale_range: None,
            save_path: None,
            save_every: 100,
            save_each: false,
            seed: 0,
            device: Device::Cpu,
            mixed_precision: false,
            profile_steps: false,
        }
    }
}

/// Checks what cellpose 4 would refuse (and what would make no sense), before any file is read.
/// `net_bsize` is the model's tile size (256 for every cpsam).
pub fn validate_cpsam_config(cfg: &CpsamTrainConfig, net_bsize: usize) -> Result<(), TrainError> {
    let bad = |m: String| Err(TrainError::Config(m));
    if cfg.optimizer != OptimizerKind::Adamw {
        return bad(format!(
            "optimizer {} is not available for Cellpose-SAM models: cellpose 4 trains them with AdamW only \
             (its SGD flag is ignored); drop --SGD/--RAdam/--optimizer or choose adamw",
            cfg.optimizer
        ));
    }
    if let Some(b) = cfg.bsize.filter(|&b| b != net_bsize) {
        return bad(format!(
            "bsize {b} is not supported for cpsam models: cellpose 4 trains Cellpose-SAM on {net_bsize}x{net_bsize} \
             tiles only (\"please set bsize to 256\"); use --bsize {net_bsize} or leave it unset"
        ));
    }
    check_run_options(cfg.batch_size, cfg.n_epochs, cfg.learning_rate, cfg.weight_decay, cfg.save_every)?;
    if cfg.nimg_per_epoch == Some(0) || cfg.nimg_test_per_epoch == Some(0) {
        return bad("nimg_per_epoch and nimg_test_per_epoch must be at least 1".into());
    }
    if let Some(r) = cfg.scale_range.filter(|r| !(r.is_finite() && *r >= 0.0)) {
        return bad(format!("scale_range must be >= 0 (got {r})"));
    }
    crate::limits::training(
        cfg.n_epochs,
        cfg.batch_size,
        net_bsize,
        cfg.nimg_per_epoch,
        cfg.nimg_test_per_epoch,
    )
    .map_err(|e| TrainError::Config(e.to_string()))
}

/// The parameters AdamW updates: every trainable tensor except the patch embedding (no gradient
/// in cellpose 4), in name order so runs and checkpoints are reproducible.
pub fn trained_parameters(model: &CpsamModel) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(name, t)| t.requires_grad() && !name.starts_with("encoder.patch_embed."))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Trains `model` in place like cellpose 4 `train_seg` and returns the loss curves; with
/// `resume` (its weights already in `model`) it continues where the checkpoint stopped.
pub fn train_seg_cpsam(
    model: &CpsamModel,
    train: &[Example],
    test: Option<&[Example]>,
    cfg: &CpsamTrainConfig,
    hooks: &mut dyn TrainHooks<CpsamModel>,
    control: &Control,
    resume: Option<Resume>,
) -> Result<TrainOutcome, TrainError> {
    let bsize = model.net.config.bsize() as usize;
    validate_cpsam_config(cfg, bsize)?;
    if train.is_empty() {
        return Err(TrainError::NoData);
    }
    if model.net.kind() != Kind::Float {
        return Err(TrainError::Config("the cpsam model must be float32 for training".into()));
    }
    let t0 = Instant::now();
    tch::manual_seed(cfg.seed as i64);
    let diam_labels = train.iter().map(|e| e.diameter).sum::<f64>() / train.len() as f64;
    crate::limits::diameter("diam_labels", diam_labels).map_err(|e| TrainError::Config(e.to_string()))?;
    if let Some(mut v) = model.vs.variables().get("diam_labels").map(|t| t.shallow_clone()) {
        tch::no_grad(|| {
            let _ = v.f_fill_(diam_labels);
        });
    }
    let tiles = Tiles {
        bsize,
        scale_range: cfg.scale_range.unwrap_or(0.5),
        rescale: cfg.rescale.then(|| model.net.diam_mean()),
    };
    let train_items = items(train, cfg.device);
    let per_epoch = cfg.nimg_per_epoch.unwrap_or(train_items.len());
    // the test tiles are the same at every evaluation (cellpose reseeds with 42 each time)
    let test_batches: Option<Vec<(Tensor, Tensor)>> = test.filter(|t| !t.is_empty()).map(|t| {
        let test_items = items(t, cfg.device);
        let n = test_items.len();
        let order = epoch_order(n, cfg.nimg_test_per_epoch.unwrap_or(n), cfg.seed, 42, 0);
        let mut rng = rng_for(cfg.seed, 43, 0);
        order.chunks(cfg.batch_size).map(|inds| tiles.batch(&test_items, inds, &mut rng)).collect()
    });
    let params: Vec<Tensor> = trained_parameters(model).into_iter().map(|(_, t)| t).collect();
    let run = Run {
        n_epochs: cfg.n_epochs,
        steps_per_epoch: per_epoch.div_ceil(cfg.batch_size),
        images_per_epoch: per_epoch,
        lr: lr_schedule_cp4(cfg.learning_rate, cfg.n_epochs),
        saves: cfg.save_path.as_deref().map(|path| Saves {
            path,
            every: cfg.save_every,
            each: cfg.save_each,
        }),
        diam_labels,
        t0,
        precision: if cfg.mixed_precision { "bf16-mixed" } else { "fp32" },
    };
    let optim = Optimizer::new(OptimizerKind::Adamw, params, cfg.weight_decay);
    let mut family = CpsamSteps {
        model,
        items: train_items,
        plan: TilePlan {
            tiles,
            per_epoch,
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            n_blocks: model.net.config.blocks.len(),
        },
        n_epochs: cfg.n_epochs,
        tiles: None,
        device: cfg.device,
        data_wait: 0.0,
        loss_sum: Tensor::zeros([], (Kind::Double, cfg.device)),
        test_batches,
        compute: if cfg.mixed_precision { Kind::BFloat16 } else { Kind::Float },
        profile: cfg.profile_steps,
    };
    epochs::fit(&mut family, (model, optim), run, hooks, control, resume)
}

/// Cellpose-SAM's part of the loop: each step's tiles (drawn ahead on the tile thread), then an
/// AdamW step with the layer drop of that step.
struct CpsamSteps<'a> {
    model: &'a CpsamModel,
    items: Vec<Item>,
    plan: TilePlan,
    n_epochs: usize,
    /// Started at the first epoch the loop runs (a resumed run's point), stopped when dropped.
    tiles: Option<TileSource>,
    device: Device,
    data_wait: f64,
    /// Sum over the epoch of loss x images, kept on the device in float64 and read once per
    /// epoch: reading each step's loss would make the host wait for the device every step. The
    /// same float64 sum of float32 losses that cellpose keeps in Python.
    loss_sum: Tensor,
    test_batches: Option<Vec<(Tensor, Tensor)>>,
    /// Kind of the matrix products (float32, or bf16 for mixed precision).
    compute: Kind,
    profile: bool,
}

impl TrainStep for CpsamSteps<'_> {
    type Model = CpsamModel;

    fn begin_epoch(&mut self, epoch: usize, first: usize, loss_sum: f64) -> Result<(), TrainError> {
        if self.tiles.is_none() {
            let stream = TileStream::new(&self.items, self.plan, epoch, first, self.n_epochs);
            let source = TileSource::start(stream, self.device.is_cuda())
                .map_err(|e| TrainError::Config(format!("could not start the tile thread: {e}")))?;
            self.tiles = Some(source);
        }
        let _ = self
            .loss_sum
            .f_fill_(loss_sum)
            .map_err(|e| TrainError::Config(format!("could not set the epoch's loss sum: {e}")))?;
        Ok(())
    }

    fn step(
        &mut self,
        optim: &mut Optimizer,
        _epoch: usize,
        _step: usize,
        lr: f64,
    ) -> Result<(), TrainError> {
        let t0 = Instant::now();
        let StepTiles { x, y, n, draws } = self
            .tiles
            .as_mut()
            .and_then(|t| t.next())
            .ok_or_else(|| TrainError::Config("the tile thread stopped unexpectedly".into()))?;
        let failed = |e| TrainError::step_failed(&x, e);
        optim.set_learning_rate(lr);
        optim.zero_grad();
        let t1 = Instant::now();
        self.data_wait += (t1 - t0).as_secs_f64();
        // dropped blocks are skipped once a left-out block's gradient is a zeroed one
        let skip = optim.grads_adopted();
        let out = self.model.net.forward_mixed(&x, Some(&draws), self.compute, skip).map_err(failed)?;
        let loss = seg_loss(&out.f_to_kind(Kind::Float).map_err(failed)?, &y).map_err(failed)?;
        let t2 = Instant::now();
        loss.f_backward().map_err(failed)?;
        let t3 = Instant::now();
        optim.apply();
        let weighted = loss.detach().f_to_kind(Kind::Double).and_then(|l| l.f_mul_scalar(n as f64));
        let _ = self.loss_sum.f_add_(&weighted.map_err(failed)?).map_err(failed)?;
        if self.profile {
            if let Device::Cuda(i) = self.device {
                tch::Cuda::synchronize(i as i64); // device times, not enqueue times
            }
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            tracing::info!(
                "profile: tiles wait {:.1} ms, forward {:.1} ms, backward {:.1} ms, AdamW {:.1} ms ({:?}, step {:.1} ms)",
                ms(t0, t1),
                ms(t1, t2),
                ms(t2, t3),
                ms(t3, Instant::now()),
                self.compute,
                ms(t0, Instant::now())
            );
        }
        Ok(())
    }

    fn data_wait_seconds(&self) -> f64 {
        self.data_wait
    }

    fn loss_sum(&self) -> f64 {
        self.loss_sum.double_value(&[])
    }

    fn test_loss(&self) -> Result<Option<f64>, TrainError> {
        let Some(batches) = &self.test_batches else { return Ok(None) };
        let tiles = batches.iter().map(|(x, y)| (x.shallow_clone(), y.shallow_clone()));
        // eval mode: no layer drop
        let compute = self.compute;
        epochs::mean_test_loss(tiles, |x| {
            self.model.net.forward_mixed(x, None, compute, false)?.f_to_kind(Kind::Float)
        })
        .map(Some)
    }

    fn save(&self, path: &Path) -> Result<(), ModelError> {
        self.model.save(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_and_other_tile_sizes_are_refused_with_the_fix() {
        let sgd = CpsamTrainConfig { optimizer: OptimizerKind::Sgd, ..Default::default() };
        let msg = validate_cpsam_config(&sgd, 256).unwrap_err().to_string();
        assert!(msg.contains("AdamW only"), "{msg}");
        let b = CpsamTrainConfig { bsize: Some(224), ..Default::default() };
        let msg = validate_cpsam_config(&b, 256).unwrap_err().to_string();
        assert!(msg.contains("bsize 224") && msg.contains("--bsize 256"), "{msg}");
        let ok = CpsamTrainConfig { bsize: Some(256), ..Default::default() };
        assert!(validate_cpsam_config(&ok, 256).is_ok());
    }

    #[test]
    fn defaults_are_cellpose4s() {
        let c = CpsamTrainConfig::default();
        assert_eq!((c.learning_rate, c.weight_decay, c.n_epochs, c.batch_size), (1e-5, 0.1, 100, 1));
        assert!(!c.rescale && c.bsize.is_none() && c.optimizer == OptimizerKind::Adamw);
    }
}
