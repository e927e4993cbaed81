//! `train`: fine-tune or train from scratch on a folder of images and masks, with cellpose's and
//! Omnipose's flag names.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::common::{ChannelArgs, DeviceArg, FolderArgs, ModelsDirArg};
use crate::config::Toggle;
use crate::control::Control;
use crate::model::{CpnetConfig, Model};
use crate::report::{CellposeEpochLog, RunRecorder, Validation};
use crate::train::{self, EpochInfo, OptimizerKind, PrepareOptions, StepInfo, TrainConfig, TrainHooks};
use crate::transforms::Normalize;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Folder of training images and their masks.
    #[arg(long)]
    pub dir: PathBuf,
    /// Folder of test images and masks: test loss at epoch 5 and every 10th, and AP at IoU
    /// 0.5/0.75/0.9 of the base model before and the trained model after training.
    #[arg(long)]
    pub test_dir: Option<PathBuf>,
    /// With --test-dir: score AP after every N-th epoch and keep the best-scoring model.
    /// Default: chosen after the first epoch from the measured times so that scoring takes
    /// under 10% of training time (8% aimed).
    #[arg(long, allow_hyphen_values = true)]
    pub eval_every: Option<usize>,
    /// With --test-dir: save the last epoch's model instead of the one with the best AP@0.5.
    #[arg(long)]
    pub keep_last: bool,
    /// Print cellpose's per-epoch line (`{epoch}, train_loss=.., test_loss=.., LR=.., time ..s`)
    /// on stdout at cellpose's cadence (it always goes to the log).
    #[arg(long)]
    pub verbose: bool,
    /// Write TensorBoard event files (loss, test loss, lr, AP) into this folder.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    #[command(flatten)]
    pub folder: FolderArgs,
    #[command(flatten)]
    pub channels: ChannelArgs,
    /// Accepted for cellpose compatibility: TIFF pages and colour samples are always read as channels.
    #[arg(long, allow_hyphen_values = true)]
    pub channel_axis: Option<i64>,
    /// Base model: a file, a built-in name (cyto3, cyto2, nuclei, ..., or cellpose 4's cpsam_v2,
    /// cpsam), a model in the models folder, or None to train from scratch. A Cellpose-SAM model
    /// (detected from the file) trains with cellpose 4's train_seg and its defaults.
    #[arg(long, default_value = "cyto3")]
    pub pretrained_model: String,
    /// Default: 0.2 with SGD (cellpose CLI), 0.005 with AdamW/RAdam (cellpose train_seg);
    /// 1e-5 for cpsam models (cellpose 4).
    #[arg(long, allow_hyphen_values = true)]
    pub learning_rate: Option<f64>,
    /// Default: 1e-5; 0.1 for cpsam models (cellpose 4).
    #[arg(long, allow_hyphen_values = true)]
    pub weight_decay: Option<f64>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Same as --optimizer sgd (cellpose's flag).
    #[arg(long = "SGD", alias = "sgd")]
    pub sgd: bool,
    /// Same as --optimizer radam (Omnipose's flag).
    #[arg(long = "RAdam", alias = "radam")]
    pub radam: bool,
    /// Default: 8; 1 for cpsam models (cellpose 4's --train_batch_size).
    #[arg(long, visible_alias = "train-batch-size", allow_hyphen_values = true)]
    pub batch_size: Option<usize>,
    /// Default: 500; 100 for cpsam models (cellpose 4).
    #[arg(long, allow_hyphen_values = true)]
    pub n_epochs: Option<usize>,
    /// Training patch size (multiple of 16; default 224); Omnipose's --tyx takes "224,224".
    /// cpsam models train on 256 only (cellpose 4 refuses any other).
    #[arg(long, alias = "tyx", value_parser = parse_bsize)]
    pub bsize: Option<usize>,
    #[arg(long, default_value_t = 5, allow_hyphen_values = true)]
    pub min_train_masks: usize,
    #[arg(long, allow_hyphen_values = true)]
    pub nimg_per_epoch: Option<usize>,
    #[arg(long, allow_hyphen_values = true)]
    pub nimg_test_per_epoch: Option<usize>,
    /// Save the model every N epochs (overwriting).
    #[arg(long, default_value_t = 100, allow_hyphen_values = true)]
    pub save_every: usize,
    /// Keep each periodic save as <model>_epoch_NNNN.
    #[arg(long)]
    pub save_each: bool,
    /// Name of the saved model (in <dir>/models/). Default: cellpose_<unix time>.
    #[arg(long, alias = "model-name-out")]
    pub model_name: Option<String>,
    /// Object diameter: unset = each image's median mask diameter; 0 = do not rescale; >0 = this
    /// diameter for every image. Images are rescaled by diameter / diam_mean.
    #[arg(long, allow_hyphen_values = true)]
    pub diameter: Option<f64>,
    /// diam_mean of a model trained from scratch.
    #[arg(long, default_value_t = 30.0, allow_hyphen_values = true)]
    pub diam_mean: f64,
    /// Channels per level of a model trained from scratch (cellpose: 32,64,128,256).
    #[arg(long, value_delimiter = ',', default_values_t = [32i64, 64, 128, 256], allow_hyphen_values = true)]
    pub nbase: Vec<i64>,
    /// Feed raw intensities (skip percentile normalisation).
    #[arg(long)]
    pub no_norm: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    /// bfloat16 convolutions: auto = on CUDA only.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub mixed_precision: Toggle,
    /// Capture each training step as a CUDA graph: auto = on CUDA only.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub cuda_graphs: Toggle,
    /// Channels-last (NHWC) memory layout: auto = on (CUDA, and CPU where oneDNN's NHWC
    /// convolutions measured ~16% faster per step on 2 x86-64 cores).
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub channels_last: Toggle,
    /// cuDNN algorithm benchmarking (CUDA): auto = on.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub cudnn_benchmark: Toggle,
    /// Log per-phase host times of every step (a device sync each): profiling only.
    #[arg(long)]
    pub profile_steps: bool,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub seed: u64,
    /// Also write the run's summary (losses, timings, paths) as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    #[command(flatten)]
    pub models_dir: ModelsDirArg,
}

fn parse_bsize(s: &str) -> Result<usize, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    let nums: Result<Vec<usize>, _> = parts.iter().map(|p| p.parse::<usize>()).collect();
    match nums.as_deref() {
        Ok([b]) => Ok(*b),
        Ok([y, x]) if y == x => Ok(*y),
        Ok([y, x]) => Err(format!("only square patches are supported (got {y},{x})")),
        _ => Err(format!("expected a number like 224 or 224,224 (got `{s}`)")),
    }
}

impl TrainArgs {
    pub(super) fn optimizer(&self) -> anyhow::Result<OptimizerKind> {
        let flags = [
            self.sgd.then_some(OptimizerKind::Sgd),
            self.radam.then_some(OptimizerKind::Radam),
            self.optimizer,
        ];
        let chosen: Vec<OptimizerKind> = flags.into_iter().flatten().collect();
        match chosen.as_slice() {
            [] => Ok(OptimizerKind::Adamw),
            [k] => Ok(*k),
            [a, rest @ ..] if rest.iter().all(|r| r == a) => Ok(*a),
            _ => bail!("conflicting optimizer flags (--SGD, --RAdam, --optimizer): choose one"),
        }
    }
}

/// Progress bar on stderr; cellpose's log line at cellpose's epochs; the metrics history.
struct BarHooks {
    bar: ProgressBar,
    recorder: RunRecorder,
    cellpose_log: CellposeEpochLog,
    verbose: bool,
}

impl TrainHooks for BarHooks {
    fn on_step(&mut self, s: &StepInfo) {
        self.bar.set_position((s.epoch * s.steps_per_epoch + s.step + 1) as u64);
    }
    fn on_epoch(
        &mut self,
        e: &EpochInfo,
        model: &Model,
        _o: &train::Optimizer,
        _s: &train::TrainState,
    ) -> Result<(), train::TrainError> {
        let test = e.test_loss.map(|t| format!(" test {t:.4}")).unwrap_or_default();
        self.bar.set_message(format!("epoch {} loss {:.4}{test} lr {:.5}", e.epoch, e.train_loss, e.lr));
        if let Some(line) = self.cellpose_log.observe(e) {
            let verbose = self.verbose;
            self.bar.suspend(|| {
                tracing::info!("{line}");
                if verbose {
                    println!("{line}");
                }
            });
        }
        if let Err(err) = self.recorder.epoch(e, model) {
            // the metrics history is a report, not the product: training goes on
            self.bar.suspend(|| tracing::warn!(error = %err, "could not record epoch {}", e.epoch));
        }
        Ok(())
    }
    fn on_saved(&mut self, path: &Path, epoch: usize) {
        self.bar.suspend(|| tracing::info!(epoch, path = %path.display(), "saved model"));
    }
}

/// The family of the base model, when it can be told without loading it (`None`: from
/// scratch, or a spec that does not resolve, which the CPnet path then reports).
fn base_family(args: &TrainArgs) -> Option<crate::model::ModelFamily> {
    let spec = args.pretrained_model.as_str();
    if ["none", "false", "0", "scratch"].contains(&spec.to_ascii_lowercase().as_str()) {
        return None;
    }
    if let Some(f) = crate::model::registry::builtin_family(spec) {
        return Some(f);
    }
    let source = crate::model::registry::resolve(spec, &args.models_dir.resolve()).ok()?;
    crate::model::ModelFamily::detect(&source.path).ok()
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    if base_family(&args) == Some(crate::model::ModelFamily::Cpsam) {
        return super::train_cpsam::run(args);
    }
    let device = args.device.resolve()?;
    let optimizer = args.optimizer()?;
    let learning_rate =
        args.learning_rate.unwrap_or(if optimizer == OptimizerKind::Sgd { 0.2 } else { 0.005 });
    // 0 = do not rescale; any other diameter is stored in the model as diam_labels
    if let Some(d) = args.diameter.filter(|&d| d != 0.0) {
        crate::limits::diameter("--diameter", d)?;
    }
    crate::limits::diameter("--diam-mean", args.diam_mean)?;
    // every option is checked before any file is read or written: a bad flag loses nothing
    let Destination { name, models_out, save_path } = args.destination()?;
    let mixed = args.mixed_precision.resolve(device.is_cuda());
    let channels_last = args.channels_last.resolve(true);
    let cfg = TrainConfig {
        learning_rate,
        weight_decay: args.weight_decay.unwrap_or(1e-5),
        optimizer,
        n_epochs: args.n_epochs.unwrap_or(500),
        batch_size: args.batch_size.unwrap_or(8),
        bsize: args.bsize.unwrap_or(224),
        nimg_per_epoch: args.nimg_per_epoch,
        nimg_test_per_epoch: args.nimg_test_per_epoch,
        rescale: args.diameter != Some(0.0),
        scale_range: None,
        save_path: Some(save_path.clone()),
        save_every: args.save_every,
        save_each: args.save_each,
        seed: args.seed,
        device,
        mixed_precision: mixed,
        channels_last,
        cudnn_benchmark: args.cudnn_benchmark.resolve(true),
        cuda_graphs: args.cuda_graphs.resolve(device.is_cuda()),
        profile_steps: args.profile_steps,
    };
    train::validate_config(&cfg)?;
    anyhow::ensure!(args.eval_every != Some(0), "--eval-every must be at least 1");
    anyhow::ensure!(
        args.eval_every.is_none() || args.test_dir.is_some(),
        "--eval-every scores the test set: give --test-dir too"
    );

    let pairs = train::discover(
        &args.dir,
        &args.folder.img_filter,
        &args.folder.mask_filter,
        args.folder.look_one_level_down,
    )?;
    let raw = train::load_pairs(&pairs)?;
    let channels = args.channels.to_channels(raw[0].image.dim().0)?;
    let normalize = Normalize { normalize: !args.no_norm, ..Default::default() };
    let opts = PrepareOptions { channels, normalize, min_train_masks: args.min_train_masks };
    let prepared = train::prepare(raw, &opts)?;
    warn_removed(&prepared, args.min_train_masks);
    let mut examples = prepared.examples;
    if let Some(d) = args.diameter.filter(|d| *d > 0.0) {
        examples.iter_mut().for_each(|e| e.diameter = d);
    }
    let test = match &args.test_dir {
        Some(dir) => {
            let pairs = train::discover(
                dir,
                &args.folder.img_filter,
                &args.folder.mask_filter,
                args.folder.look_one_level_down,
            )?;
            let topts = PrepareOptions { min_train_masks: 0, ..opts.clone() };
            let mut t = train::prepare(train::load_pairs(&pairs)?, &topts)?.examples;
            if let Some(d) = args.diameter.filter(|d| *d > 0.0) {
                t.iter_mut().for_each(|e| e.diameter = d);
            }
            Some(Arc::new(t))
        }
        None => None,
    };

    let nchan = channels.nchan() as i64;
    let model = if ["none", "false", "0", "scratch"]
        .contains(&args.pretrained_model.to_ascii_lowercase().as_str())
    {
        tch::manual_seed(args.seed as i64);
        tracing::info!(">>>> training from scratch");
        let nbase = [vec![nchan], args.nbase.clone()].concat();
        crate::limits::cpnet_widths("--nbase", &nbase, 3, 3)?;
        Model::new(CpnetConfig { nbase, diam_mean: args.diam_mean, ..Default::default() }, device)?
    } else {
        let loaded = crate::model::open_model(&args.pretrained_model, &args.models_dir.resolve(), device)?;
        loaded.model.check_io(nchan, 3, &loaded.source.path.display().to_string()).map_err(|e| match e {
            crate::model::ModelError::ChannelMismatch { .. } => {
                anyhow::anyhow!("{e}, or change --chan/--chan2/--nchan")
            }
            e => e.into(),
        })?;
        if let Some(d) = loaded.source.builtin_diam_mean {
            loaded.model.net.set_diam_mean(d);
        }
        tracing::info!(">>>> loading model {}", loaded.source.path.display());
        loaded.model
    };

    std::fs::create_dir_all(&models_out)
        .with_context(|| format!("failed to create {}", models_out.display()))?;
    tracing::info!(
        ">>> n_epochs={}, n_train={}, n_test={}, {optimizer}, learning_rate={learning_rate}, weight_decay={}, device {}",
        cfg.n_epochs,
        examples.len(),
        test.as_ref().map(|t| t.len()).unwrap_or(0),
        cfg.weight_decay,
        crate::device::describe(device)
    );
    let bar = step_bar(cfg.n_epochs, cfg.nimg_per_epoch.unwrap_or(examples.len()), cfg.batch_size);
    let validation = test.clone().map(|examples| Validation {
        examples,
        diam_mean: model.net.diam_mean(),
        device,
        every: args.eval_every,
    });
    let mut recorder = RunRecorder::create(&save_path, args.log_dir.as_deref(), validation)?;
    if let Some(ap) = recorder.before(&model)? {
        tracing::info!(">>>> test set AP before training: {}", fmt_ap(ap));
    }
    let mut hooks = BarHooks { bar, recorder, cellpose_log: CellposeEpochLog::new(), verbose: args.verbose };
    let train_count = examples.len();
    let outcome =
        train::train_seg(&model, Arc::new(examples), test, &cfg, &mut hooks, &Control::new(), None)?;
    hooks.bar.finish_and_clear();
    let mut recorder = hooks.recorder;
    let keep_best = !args.keep_last;
    if let Some(ap) = recorder.after(&model, cfg.n_epochs, keep_best)? {
        tracing::info!(">>>> test set AP after training: {}", fmt_ap(ap));
    }
    let best_epoch = recorder.best.best().map(|b| b.epoch).filter(|_| keep_best);
    if let Some(epoch) = best_epoch {
        if epoch != cfg.n_epochs {
            // the trainer saved the last epoch; the kept model replaces it
            model.save(&save_path).with_context(|| format!("failed to save {}", save_path.display()))?;
        }
        eprintln!(
            ">>>> kept the model of epoch {epoch} of {} (best test-set AP@0.5 {:.3}, scored every {} epochs)",
            cfg.n_epochs,
            recorder.best.best().map(|b| b.ap50).unwrap_or(f64::NAN),
            recorder.every.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    // the model is stored: its history goes beside it (a failed run removes its own)
    if let Err(err) = recorder.keep() {
        tracing::warn!(error = %err, "could not keep the metrics history");
    }
    if let Some(ap) = &recorder.ap_after {
        let qc = RunRecorder::qc_csv_path(&save_path);
        if let Err(err) = std::fs::write(&qc, crate::report::qc_csv(ap)) {
            tracing::warn!(error = %err, path = %qc.display(), "could not write the QC metrics");
        }
    }
    let report = RunRecorder::report_path(&save_path);
    let title = format!(
        "{name} (from {}, {} epochs, {train_count} training images)",
        args.pretrained_model, cfg.n_epochs
    );
    if let Err(err) = recorder.write_png(&report, &title) {
        tracing::warn!(error = %err, "could not draw the training report");
    }
    if let Some(path) = &args.summary_json {
        let doc = serde_json::json!({
            "outcome": outcome,
            "device": crate::device::describe(device),
            "n_train": train_count,
            "batch_size": cfg.batch_size,
            "bsize": cfg.bsize,
            "mixed_precision": cfg.mixed_precision,
            "channels_last": cfg.channels_last,
            "cuda_graphs": cfg.cuda_graphs,
            "ap_before": recorder.ap_before,
            "ap_after": recorder.ap_after,
            "best_epoch": best_epoch,
            "scored_epochs": recorder.best.history,
            "score_seconds": recorder.score_seconds,
            "scorings": recorder.scorings,
            "eval_every": recorder.every,
            "metrics": RunRecorder::metrics_path(&save_path),
            "tensorboard": recorder.tensorboard_path(),
            "report": report,
        });
        write_summary(path, &doc)?;
    }
    Ok(trained(&save_path, &outcome))
}

/// Where a trained model goes: `<dir>/models/<name>`.
pub(super) struct Destination {
    pub name: String,
    /// `<dir>/models`, created only once every option has been checked.
    pub models_out: PathBuf,
    pub save_path: PathBuf,
}

impl TrainArgs {
    /// `--model-name` (default `cellpose_<unix time>`) checked, and where the model goes.
    /// Nothing is created yet.
    pub(super) fn destination(&self) -> anyhow::Result<Destination> {
        let name = self.model_name.clone().unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("cellpose_{secs}")
        });
        crate::model::name::check_model_name(&name).map_err(|m| anyhow::anyhow!("--model-name {m}"))?;
        let models_out = self.dir.join("models");
        let save_path = models_out.join(&name);
        anyhow::ensure!(
            !save_path.is_dir(),
            "--model-name `{name}`: {} is a folder; choose another name",
            save_path.display()
        );
        Ok(Destination { name, models_out, save_path })
    }
}

/// cellpose's warning about training images dropped for having too few masks.
pub(super) fn warn_removed(prepared: &train::Prepared, min_train_masks: usize) {
    if !prepared.removed.is_empty() {
        tracing::warn!(
            "{} train images with number of masks less than min_train_masks ({}), removing from train set: {}",
            prepared.removed.len(),
            min_train_masks,
            prepared.removed.iter().map(|(n, k)| format!("{n} ({k} masks)")).collect::<Vec<_>>().join(", ")
        );
    }
}

/// A progress bar over every training step of the run.
pub(super) fn step_bar(n_epochs: usize, images_per_epoch: usize, batch_size: usize) -> ProgressBar {
    let bar = ProgressBar::new((n_epochs * images_per_epoch.div_ceil(batch_size)) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// `--summary-json`: the run's summary document.
pub(super) fn write_summary(path: &Path, doc: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(doc)?)
        .with_context(|| format!("failed to write {}", path.display()))
}

/// cellpose's last line of a training run; the run succeeded.
pub(super) fn trained(save_path: &Path, outcome: &train::TrainOutcome) -> ExitCode {
    eprintln!(
        ">>>> model trained and saved to {} (final train loss {:.4}, diam_labels {:.2}, {:.3} s/step)",
        save_path.display(),
        outcome.train_losses.last().copied().unwrap_or(f64::NAN),
        outcome.diam_labels,
        outcome.seconds_per_step
    );
    ExitCode::SUCCESS
}

fn fmt_ap(ap: &crate::evaluate::ApSummary) -> String {
    let parts: Vec<String> =
        ap.thresholds.iter().zip(&ap.ap).map(|(t, a)| format!("AP@{t} {a:.3}")).collect();
    format!("{} ({} images, {} objects)", parts.join(", "), ap.n_images, ap.n_true)
}
