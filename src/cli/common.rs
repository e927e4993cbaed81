//! Flags shared by several subcommands (channels, device, models directory), with cellpose's names.

use std::path::PathBuf;

use clap::Args;

use crate::transforms::Channels;

/// cellpose-style channel flags: `--chan/--chan2`, or `--all-channels [--nchan N]`.
#[derive(Args, Debug, Clone)]
pub struct ChannelArgs {
    /// Channel to segment: 0 = grey (mean of channels), 1 = first/red, 2 = second/green, 3 = blue.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub chan: usize,
    /// Nuclear channel: 0 = none, 1.. as --chan.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub chan2: usize,
    /// Use all channels as they are (no chan/chan2 selection).
    #[arg(long)]
    pub all_channels: bool,
    /// With --all-channels: number of network input channels (default: the image's).
    #[arg(long, allow_hyphen_values = true)]
    pub nchan: Option<usize>,
}

impl ChannelArgs {
    pub fn to_channels(&self, image_channels: usize) -> anyhow::Result<Channels> {
        if self.all_channels {
            let nchan = self.nchan.unwrap_or(image_channels);
            anyhow::ensure!(nchan >= 1, "--nchan must be at least 1");
            Ok(Channels::All { nchan })
        } else {
            anyhow::ensure!(self.nchan.is_none(), "--nchan only applies with --all-channels");
            Ok(Channels::Pair { chan: self.chan, chan2: self.chan2 })
        }
    }
}

/// How a folder of images and masks is walked (cellpose's flag names): masks are
/// `<image base><mask filter>.tif/.tiff/.png` and are never taken for images.
#[derive(Args, Debug, Clone)]
pub struct FolderArgs {
    /// Only images whose name (without extension) ends with this.
    #[arg(long, default_value = "")]
    pub img_filter: String,
    /// Masks are named <image base><mask filter>.tif/.tiff/.png.
    #[arg(long, default_value = "_masks")]
    pub mask_filter: String,
    /// Also read images from the folder's subfolders.
    #[arg(long)]
    pub look_one_level_down: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DeviceArg {
    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl DeviceArg {
    pub fn resolve(&self) -> anyhow::Result<tch::Device> {
        Ok(crate::device::parse_device(&self.device)?)
    }
}

#[derive(Args, Debug, Clone)]
pub struct ModelsDirArg {
    /// Folder of built-in and saved models (default: $CELLPOSE_LOCAL_MODELS_PATH or ~/.cellpose/models).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
}

impl ModelsDirArg {
    pub fn resolve(&self) -> PathBuf {
        crate::model::registry::models_dir(self.models_dir.as_deref())
    }
}

/// Model and network-input flags shared by `predict`, `segment` and `eval`.
#[derive(Args, Debug, Clone)]
pub struct NetworkArgs {
    /// Model: a file, a built-in name (cyto3, nuclei, ..., cpsam_v2, cpsam) or a model in the
    /// models directory. Its family (cellpose 3 CPnet or cellpose 4 cpsam) is read from the file.
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub channels: ChannelArgs,
    /// Object diameter in pixels (0 = use the model's diam_labels).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub diameter: f64,
    /// Feed raw intensities (skip 1-99 percentile normalisation).
    #[arg(long)]
    pub no_normalize: bool,
    /// Invert intensities after normalising (dark objects).
    #[arg(long)]
    pub invert: bool,
    /// Tiles per network batch.
    #[arg(long, default_value_t = 8, allow_hyphen_values = true)]
    pub batch_size: i64,
    /// cpsam only: tile size (cellpose 4 `--bsize`; must be 256, the network's position grid).
    #[arg(long, allow_hyphen_values = true)]
    pub bsize: Option<i64>,
    /// cpsam only: weight precision (auto = bf16 on CUDA as cellpose 4 does, fp32 on the CPU).
    #[arg(long, value_enum, default_value_t = crate::predict_cpsam::Precision::Auto)]
    pub precision: crate::predict_cpsam::Precision,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub models_dir: ModelsDirArg,
}

impl NetworkArgs {
    /// Checks the flags and opens the model of whichever family the file holds. A CPnet uses the
    /// cellpose 3 flags as before (with `--all-channels` and no `--nchan`, the model's input
    /// channels); a cpsam model reads them with cellpose 4's meaning: `--chan/--chan2` are ignored
    /// (with a warning, as cellpose 4 does), the first three channels are used.
    pub fn open(
        &self,
    ) -> anyhow::Result<(crate::model::AnyModel, crate::predict::PredictOptions, tch::Device)> {
        use crate::model::AnyModel;
        anyhow::ensure!(
            self.diameter >= 0.0 && self.diameter.is_finite(),
            "--diameter must be >= 0 (got {})",
            self.diameter
        );
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        let device = self.device.resolve()?;
        let mut loaded = crate::model::open_any(&self.model, &self.models_dir.resolve(), device)?;
        let channels = match &mut loaded {
            AnyModel::Cpnet(m) => {
                anyhow::ensure!(
                    self.bsize.is_none(),
                    "--bsize applies to cpsam models only ({} is a CPnet)",
                    self.model
                );
                self.channels.to_channels(m.model.net.config.nbase[0] as usize)?
            }
            AnyModel::Cpsam(m) => {
                let bs = m.model.net.config.bsize();
                if let Some(b) = self.bsize.filter(|&b| b != bs) {
                    anyhow::bail!("--bsize {b} is not supported for cpsam models; cellpose 4 requires {bs}");
                }
                if self.channels.chan != 0 || self.channels.chan2 != 0 || self.channels.nchan.is_some() {
                    tracing::warn!(
                        "--chan/--chan2/--nchan are ignored for cpsam models: cellpose 4 uses the first 3 channels as they are"
                    );
                }
                m.model.to_kind(self.precision.kind_on(device));
                crate::transforms::Channels::All { nchan: crate::predict_cpsam::CP4_MAX_CHANNELS }
            }
        };
        let mut predict =
            crate::predict::PredictOptions { channels, diameter: Some(self.diameter), ..Default::default() };
        predict.normalize.normalize = !self.no_normalize;
        predict.normalize.invert = self.invert;
        predict.tiles.batch_size = self.batch_size;
        Ok((loaded, predict, device))
    }
}

/// Model and mask flags shared by `segment` and `eval` (cellpose `eval` arguments).
#[derive(Args, Debug, Clone)]
pub struct SegmentFlags {
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Drop masks whose flows disagree with the network's by more than this (0 = keep all).
    #[arg(long, default_value_t = 0.4, allow_hyphen_values = true)]
    pub flow_threshold: f64,
    /// Pixels with a cell probability logit above this are followed to a mask.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub cellprob_threshold: f32,
    /// Masks smaller than this (pixels) are removed.
    #[arg(long, default_value_t = 15, allow_hyphen_values = true)]
    pub min_size: i64,
    /// Euler steps (default: 200, scaled by the resize factor as cellpose does).
    #[arg(long, allow_hyphen_values = true)]
    pub niter: Option<u32>,
}

impl SegmentFlags {
    /// Checks the flags and opens the model.
    pub fn open(
        &self,
    ) -> anyhow::Result<(crate::model::AnyModel, crate::evaluate::SegmentSettings, tch::Device)> {
        anyhow::ensure!(
            self.flow_threshold >= 0.0,
            "--flow-threshold must be >= 0 (got {})",
            self.flow_threshold
        );
        let (loaded, predict, device) = self.network.open()?;
        let masks = crate::evaluate::MaskOptions {
            flow_threshold: self.flow_threshold,
            cellprob_threshold: self.cellprob_threshold,
            min_size: self.min_size,
            niter: self.niter,
        };
        Ok((loaded, crate::evaluate::SegmentSettings { predict, masks }, device))
    }
}
