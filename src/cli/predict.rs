//! `predict`: run the network on one image and write dY, dX, cellprob as a float32 TIFF.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::common::NetworkArgs;
use crate::predict;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Input image (TIFF or PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// Output TIFF with three float32 pages: dY, dX, cellprob.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
}

pub fn run(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let (loaded, opts, device) = args.network.open()?;
    let raw = crate::imageio::read_image(&args.image)?;
    loaded.model.check_io(
        opts.channels.nchan() as i64,
        loaded.model.net.config.nout,
        &loaded.source.path.display().to_string(),
    )?;
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
