//! The `train` subcommand's flags (cellpose's and Omnipose's names), and what they decide
//! before any file is read: the optimizer and where the model goes.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::cli::common::{ChannelArgs, DeviceArg, FolderArgs, ModelsDirArg};
use crate::config::Toggle;
use crate::train::OptimizerKind;

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
    /// bf16 matrix products with float32 weights: auto = CUDA, and CPUs with bf16 kernels for
    /// the families where bf16 kept validation accuracy (README "Training precision").
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
