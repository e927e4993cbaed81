//! `predict`: run the network on one image and write dY, dX, cellprob as a float32 TIFF.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::common::NetworkArgs;
use crate::model::AnyModel;
use crate::{predict, predict_cpsam};

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
    let pred = match &loaded {
        AnyModel::Cpnet(loaded) => {
            loaded.model.check_io(
                opts.channels.nchan() as i64,
                loaded.model.net.config.nout,
                &loaded.source.path.display().to_string(),
            )?;
            predict::predict(&loaded.model, loaded.diam_mean(), &raw, &opts, device)
        }
        AnyModel::Cpsam(loaded) => predict_cpsam::predict_cp4(&loaded.model, &raw, &(&opts).into()),
    }
    .with_context(|| format!("failed to prepare {}", args.image.display()))?;
    let (_, h, w) = pred.dp.dim();
    let out = crate::evaluate::flow_pages(&pred);
    crate::imageio::write_tiff_f32(&args.out, &out)?;
    eprintln!(
        "wrote {} (dY, dX, cellprob; {} model; {}x{}; rescale {:.3}; device {})",
        args.out.display(),
        loaded.family(),
        h,
        w,
        pred.rescale,
        crate::device::describe(device)
    );
    Ok(ExitCode::SUCCESS)
}
