//! The epoch loop of cellpose 4.2.1.1 `train_seg` for Cellpose-SAM models.
//!
//! What it keeps from cellpose 3.1.1.2 ([`crate::train::train_seg`]): `_loss_fn_seg`, the
//! per-epoch permutation (or sampling with replacement when `nimg_per_epoch` differs from the
//! set size), test loss at epoch 5 and every 10th epoch on a fixed draw of test tiles, saves
//! every `save_every` epochs and at the end, `diam_labels` = mean training diameter.
//!
//! What differs: AdamW only (cellpose 4 ignores `SGD`; here it is refused so nobody believes
//! they got SGD), defaults lr 1e-5, weight decay 0.1, 100 epochs, batch 1; tiles of exactly the
//! network's 256 pixels; no rescaling by default and the rotation/scale augmentation of
//! [`super::augment`]; the LR tail from 100 epochs ([`super::schedule`]); the network in
//! training mode (layer drop) for training steps and eval mode for the test loss; fp32 weights
//! throughout (a bf16 file is loaded as fp32) and fp32 files saved.
//!
//! Resumable like the CPnet loop: a checkpoint after any epoch, or before any step on a
//! shutdown, continues bit for bit. Why that holds: the augmentation stream of an epoch is a
//! pure function of seed and epoch (a resume mid-epoch replays the draws of the steps done), and
//! the layer drop of each step one of (seed, epoch, step) ([`layer_drop_draws`]).
//!
//! The patch embedding takes no gradient (`CPSAM.forward` convolves with `proj.weight.data`),
//! so, as PyTorch's AdamW skips parameters without a gradient, it is neither updated nor decayed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::augment::Cp4Augment;
use super::schedule::lr_schedule_cp4;
use crate::control::{Control, StopReason};
use crate::model::CpsamModel;
use crate::train::batches::epoch_order;
use crate::train::data::Example;
use crate::train::loss::seg_loss;
use crate::train::optim::{Optimizer, OptimizerKind};
use crate::train::trainer::{
    epoch_path, EpochInfo, Resume, Start, StepInfo, TrainError, TrainOutcome, TrainState,
};
use crate::transforms::array3_to_tensor;

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
        }
    }
}

/// What the caller sees during a cpsam run.
pub trait CpsamHooks {
    fn on_step(&mut self, _info: &StepInfo) {}
    /// After each epoch, with the state to resume from after it (to checkpoint); an error stops
    /// training.
    fn on_epoch(
        &mut self,
        _info: &EpochInfo,
        _model: &CpsamModel,
        _optim: &Optimizer,
        _state: &TrainState,
    ) -> Result<(), TrainError> {
        Ok(())
    }
    fn on_saved(&mut self, _path: &Path, _epoch: usize) {}
    /// Once when stopping for a shutdown, before the step that would have run next, with
    /// everything needed to resume exactly.
    fn on_interrupt(&mut self, _model: &CpsamModel, _optim: &Optimizer, _state: &TrainState) {}
}

/// No-op hooks.
pub struct NoCpsamHooks;
impl CpsamHooks for NoCpsamHooks {}

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

/// A prepared image as tensors: `[3, H, W]` image and targets, and its diameter.
struct Item {
    image: Tensor,
    targets: Tensor,
    diameter: f64,
}

fn items(examples: &[Example], device: Device) -> Vec<Item> {
    examples
        .iter()
        .map(|e| Item {
            image: array3_to_tensor(&e.image).to_device(device),
            targets: array3_to_tensor(&e.flows).to_device(device),
            diameter: e.diameter,
        })
        .collect()
}

/// One augmented batch `(x [B, 3, bs, bs], lbl [B, 3, bs, bs])` of `inds`.
fn batch(
    items: &[Item],
    inds: &[usize],
    rng: &mut ChaCha8Rng,
    bsize: usize,
    scale_range: f64,
    rescale: Option<f64>,
) -> (Tensor, Tensor) {
    let (mut xs, mut ys) = (Vec::with_capacity(inds.len()), Vec::with_capacity(inds.len()));
    for &i in inds {
        let it = &items[i];
        let (x, y) = draw(it, rng, bsize, scale_range, rescale).apply(&it.image, &it.targets, bsize);
        xs.push(x);
        ys.push(y);
    }
    (Tensor::stack(&xs, 0), Tensor::stack(&ys, 0))
}

/// The augmentation of `it`, drawn from `rng` (zoomed by diameter / `rescale` when rescaling).
fn draw(it: &Item, rng: &mut ChaCha8Rng, bsize: usize, scale_range: f64, rescale: Option<f64>) -> Cp4Augment {
    let size = it.image.size();
    let rsc = rescale.map_or(1.0, |diam_mean| it.diameter / diam_mean);
    Cp4Augment::draw(rng, size[1] as usize, size[2] as usize, bsize, scale_range, rsc)
}

/// RNG for the augmentation of one epoch (a pure function of seed and epoch, as cellpose's
/// `np.random.seed(iepoch)`); the test tiles use a fixed stream, as cellpose's `seed(42)`.
fn rng_for(seed: u64, stream: u64, epoch: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r.set_word_pos((epoch as u128) << 40);
    r
}

/// The layer drop's uniform draws `[batch, n_blocks]` for one training step: a pure function of
/// (seed, epoch, step), from a stream of its own (not torch's global generator, which other
/// threads may use), so a resumed run drops the same blocks as an uninterrupted one.
fn layer_drop_draws(seed: u64, epoch: usize, step: usize, batch: usize, n_blocks: usize) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(2);
    rng.set_word_pos((((epoch as u128) << 24) | step as u128) << 16);
    let draws: Vec<f32> = (0..batch * n_blocks).map(|_| rng.gen::<f32>()).collect();
    Tensor::from_slice(&draws).view([batch as i64, n_blocks as i64])
}

/// Trains `model` in place like cellpose 4 `train_seg` and returns the loss curves; with
/// `resume` (its weights already in `model`) it continues where the checkpoint stopped.
pub fn train_seg_cpsam(
    model: &CpsamModel,
    train: &[Example],
    test: Option<&[Example]>,
    cfg: &CpsamTrainConfig,
    hooks: &mut dyn CpsamHooks,
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
    let rescale = cfg.rescale.then(|| model.net.diam_mean());
    let scale_range = cfg.scale_range.unwrap_or(0.5);
    let device = cfg.device;
    let train_items = items(train, device);
    let nimg = train_items.len();
    let per_epoch = cfg.nimg_per_epoch.unwrap_or(nimg);
    // the test tiles are the same at every evaluation (cellpose reseeds with 42 each time)
    let test_batches: Option<Vec<(Tensor, Tensor)>> = test.filter(|t| !t.is_empty()).map(|t| {
        let test_items = items(t, device);
        let n = test_items.len();
        let order = epoch_order(n, cfg.nimg_test_per_epoch.unwrap_or(n), cfg.seed, 42, 0);
        let mut rng = rng_for(cfg.seed, 43, 0);
        order
            .chunks(cfg.batch_size)
            .map(|inds| batch(&test_items, inds, &mut rng, bsize, scale_range, rescale))
            .collect()
    });
    let lr = lr_schedule_cp4(cfg.learning_rate, cfg.n_epochs);
    let params: Vec<Tensor> = trained_parameters(model).into_iter().map(|(_, t)| t).collect();
    let mut optim = Optimizer::new(OptimizerKind::Adamw, params, cfg.weight_decay);
    let steps_per_epoch = per_epoch.div_ceil(cfg.batch_size);
    let Start {
        epoch: start,
        step: start_step,
        partial_epoch_loss: partial,
        mut train_losses,
        mut test_losses,
        mut epoch_seconds,
    } = Start::resuming(resume, &mut optim, cfg.n_epochs, steps_per_epoch)?;
    let total_steps = (cfg.n_epochs - start) * steps_per_epoch - start_step;
    let mut steps_done = 0usize;
    let mut steady: Option<(Instant, usize)> = None;
    let train_t0 = Instant::now();
    for epoch in start..cfg.n_epochs {
        let epoch_t0 = Instant::now();
        let order = epoch_order(nimg, per_epoch, cfg.seed, 0, epoch);
        let mut rng = rng_for(cfg.seed, 1, epoch);
        let first_step = if epoch == start { start_step } else { 0 };
        let mut loss_sum = if epoch == start { partial } else { 0.0 };
        for (step, inds) in order.chunks(cfg.batch_size).enumerate() {
            if step < first_step {
                // done before the checkpoint: consume its draws so the next steps see theirs
                for &i in inds {
                    draw(&train_items[i], &mut rng, bsize, scale_range, rescale);
                }
                continue;
            }
            // checked before every step: a cancel or a shutdown waits for one step at most
            match control.reason() {
                None => {}
                Some(StopReason::Cancel) => return Err(TrainError::Cancelled { epoch }),
                Some(StopReason::Shutdown) => {
                    let state = TrainState::at(
                        epoch,
                        step,
                        optim.steps,
                        loss_sum,
                        &train_losses,
                        &test_losses,
                        &epoch_seconds,
                    );
                    hooks.on_interrupt(model, &optim, &state);
                    return Err(TrainError::Interrupted { epoch, step });
                }
            }
            let (x, y) = batch(&train_items, inds, &mut rng, bsize, scale_range, rescale);
            let failed = |e| TrainError::step_failed(&x, e);
            let draws = layer_drop_draws(cfg.seed, epoch, step, inds.len(), model.net.config.blocks.len());
            optim.set_learning_rate(lr[epoch]);
            optim.zero_grad();
            let out = model.net.forward_drawn(&x, Some(&draws)).map_err(failed)?;
            let loss = seg_loss(&out, &y).map_err(failed)?;
            loss.f_backward().map_err(failed)?;
            optim.apply();
            loss_sum += loss.double_value(&[]) * inds.len() as f64;
            steps_done += 1;
            let elapsed = train_t0.elapsed().as_secs_f64();
            hooks.on_step(&StepInfo {
                epoch,
                n_epochs: cfg.n_epochs,
                step,
                steps_per_epoch,
                lr: lr[epoch],
                elapsed_s: t0.elapsed().as_secs_f64(),
                eta_s: elapsed / steps_done as f64 * (total_steps - steps_done) as f64,
            });
        }
        let train_loss = loss_sum / per_epoch as f64;
        if !train_loss.is_finite() {
            return Err(TrainError::Diverged { epoch, value: train_loss });
        }
        train_losses[epoch] = train_loss;
        if epoch == start {
            steady = Some((Instant::now(), steps_done));
        }
        if epoch == 5 || epoch % 10 == 0 {
            if let Some(tb) = &test_batches {
                test_losses[epoch] = Some(test_loss(model, tb)?);
            }
        }
        epoch_seconds[epoch] = epoch_t0.elapsed().as_secs_f64();
        let elapsed = train_t0.elapsed().as_secs_f64();
        let per_step = elapsed / steps_done.max(1) as f64;
        let info = EpochInfo {
            epoch,
            n_epochs: cfg.n_epochs,
            train_loss,
            test_loss: test_losses[epoch],
            lr: lr[epoch],
            elapsed_s: t0.elapsed().as_secs_f64(),
            eta_s: per_step * (total_steps - steps_done) as f64,
            seconds_per_step: per_step,
            seconds: epoch_seconds[epoch],
        };
        tracing::debug!(epoch, train_loss, test_loss = ?info.test_loss, lr = lr[epoch], "epoch done");
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
                    Err(e) => tracing::warn!(error = %e, path = %p.display(), "periodic model save failed"),
                }
            }
        }
    }
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
        data_wait_seconds: 0.0,
    })
}

/// Mean loss over the fixed test tiles, network in eval mode (no layer drop).
fn test_loss(model: &CpsamModel, batches: &[(Tensor, Tensor)]) -> Result<f64, TrainError> {
    tch::no_grad(|| {
        let (mut sum, mut n) = (0.0, 0usize);
        for (x, y) in batches {
            let out = model.net.forward_t(x, false).map_err(|e| TrainError::step_failed(x, e))?;
            let bs = x.size()[0] as usize;
            sum +=
                seg_loss(&out, y).map_err(|e| TrainError::step_failed(x, e))?.double_value(&[]) * bs as f64;
            n += bs;
        }
        Ok(sum / n.max(1) as f64)
    })
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
