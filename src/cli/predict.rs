//! `predict`: run the network on one image and write dY, dX, cellprob as a float32 TIFF.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::common::{ChannelArgs, DeviceArg, ModelsDirArg};
use crate::predict::{self, PredictOptions};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Model: a file, a built-in name (cyto3, nuclei, ...) or a model in the models directory.
    #[arg(long)]
    pub model: String,
    /// Input image (TIFF or PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// Output TIFF with three float32 pages: dY, dX, cellprob.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub channels: ChannelArgs,
    /// Object diameter in pixels (0 = use the model's diam_labels).
    #[arg(long, default_value_t = 0.0)]
    pub diameter: f64,
    /// Feed raw intensities (skip 1-99 percentile normalisation).
    #[arg(long)]
    pub no_normalize: bool,
    /// Invert intensities after normalising (dark objects).
    #[arg(long)]
    pub invert: bool,
    /// Tiles per network batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: i64,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub models_dir: ModelsDirArg,
}

pub fn run(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.resolve()?;
    let loaded = crate::model::open_model(&args.model, &args.models_dir.resolve(), device)?;
    let raw = crate::imageio::read_image(&args.image)?;
    let channels = args.channels.to_channels(raw.dim().0)?;
    loaded.model.check_io(
        channels.nchan() as i64,
        loaded.model.net.config.nout,
        &loaded.source.path.display().to_string(),
    )?;
    let mut opts = PredictOptions { channels, diameter: Some(args.diameter), ..Default::default() };
    opts.normalize.normalize = !args.no_normalize;
    opts.normalize.invert = args.invert;
    opts.tiles.batch_size = args.batch_size;
    let pred = predict::predict(&loaded.model, loaded.diam_mean(), &raw, &opts, device)
        .with_context(|| format!("failed to prepare {}", args.image.display()))?;
    let (_, h, w) = pred.dp.dim();
    let out = crate::evaluate::flow_pages(&pred);
    crate::imageio::write_tiff_f32(&args.out, &out)?;
    eprintln!(
        "wrote {} (dY, dX, cellprob; {}x{}; rescale {:.3}; device {})",
        args.out.display(),
        h,
        w,
        pred.rescale,
        crate::device::describe(device)
    );
    Ok(ExitCode::SUCCESS)
}
