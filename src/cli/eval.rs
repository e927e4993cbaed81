//! `eval`: segment a folder of images that have ground-truth masks and print average precision
//! at IoU 0.5/0.75/0.9 per image and as the mean over images (cellpose `metrics.average_precision`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::common::{FolderArgs, SegmentFlags};
use crate::evaluate::{self, Folder};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Folder of images and their ground-truth masks (found as `train --dir` finds them).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub folder: FolderArgs,
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
        img_filter: &args.folder.img_filter,
        mask_filter: &args.folder.mask_filter,
        look_one_level_down: args.folder.look_one_level_down,
    };
    let summary = evaluate::evaluate_folder(
        &loaded,
        &folder,
        &settings,
        device,
        &mut |s| tracing::debug!(image = %s.name, n_true = s.n_true, n_pred = s.n_pred, ap50 = s.ap[0], "scored"),
    )?;
    let model = loaded.source().path.display().to_string();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&evaluate::summary_json(&summary, &model))?);
    } else {
        print!("{}", evaluate::summary_table(&summary));
    }
    Ok(ExitCode::SUCCESS)
}
