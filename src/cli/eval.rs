//! `eval`: segment a folder of images that have ground-truth masks and print average precision
//! at IoU 0.5/0.75/0.9 per image and as the mean over images (cellpose `metrics.average_precision`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::common::SegmentFlags;
use crate::evaluate::{self, Folder};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Folder of images and their ground-truth masks (found as `train --dir` finds them).
    #[arg(long)]
    pub dir: PathBuf,
    /// Only images whose name (without extension) ends with this.
    #[arg(long, default_value = "")]
    pub img_filter: String,
    /// Masks are named <image base><mask filter>.tif/.tiff/.png.
    #[arg(long, default_value = "_masks")]
    pub mask_filter: String,
    /// Also read images from the folder's subfolders.
    #[arg(long)]
    pub look_one_level_down: bool,
    /// Print the scores as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub flags: SegmentFlags,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let (loaded, settings, device) = args.flags.open()?;
    let folder = Folder {
        dir: &args.dir,
        img_filter: &args.img_filter,
        mask_filter: &args.mask_filter,
        look_one_level_down: args.look_one_level_down,
    };
    let summary = evaluate::evaluate_folder(
        &loaded,
        &folder,
        &settings,
        device,
        &mut |s| tracing::debug!(image = %s.name, n_true = s.n_true, n_pred = s.n_pred, ap50 = s.ap[0], "scored"),
    )?;
    let model = loaded.source.path.display().to_string();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&evaluate::summary_json(&summary, &model))?);
    } else {
        print!("{}", evaluate::summary_table(&summary));
    }
    Ok(ExitCode::SUCCESS)
}
