//! `eval`: segment a folder of images that have ground-truth masks and print average precision
//! at IoU 0.5/0.75/0.9 per image and as the mean over images (cellpose `metrics.average_precision`).

use std::path::{Path, PathBuf};

use anyhow::Context;
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
    /// Write a picture per image into this folder (`<image>_overlay.png`): the image with its
    /// annotated outlines (orange) and the model's (blue), misses and false positives filled,
    /// AP@0.5 and TP/FP/FN in the caption.
    #[arg(long)]
    pub overlay: Option<PathBuf>,
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
    if let Some(dir) = &args.overlay {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the overlay folder {}", dir.display()))?;
    }
    let model = loaded.source().path.display().to_string();
    let label =
        loaded.source().path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut failed: Option<anyhow::Error> = None;
    let summary = evaluate::evaluate_folder(&loaded, &folder, &settings, device, &mut |s| {
        let score = s.score;
        tracing::debug!(image = %score.name, n_true = score.n_true, n_pred = score.n_pred, ap50 = score.ap[0], "scored");
        if let (Some(dir), None) = (&args.overlay, &failed) {
            failed = write_overlay(dir, &label, &s).err();
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&evaluate::summary_json(&summary, &model))?);
    } else {
        print!("{}", evaluate::summary_table(&summary));
    }
    Ok(ExitCode::SUCCESS)
}

/// `<dir>/<image name, folders joined by _>_overlay.png` for one scored image.
fn write_overlay(dir: &Path, model: &str, s: &evaluate::Scored<'_>) -> anyhow::Result<()> {
    use crate::report::overlay::{render_overlay, OverlayColumn, OverlayImage};
    let e = s.example;
    let png = render_overlay(
        &[OverlayImage { name: &e.name, image: &e.image, truth: &e.labels }],
        &[OverlayColumn { label: model.to_string(), masks: vec![s.masks] }],
    )
    .with_context(|| format!("drawing the overlay of {}", e.name))?;
    let stem = Path::new(&e.name).with_extension("");
    let flat: Vec<String> = stem.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let path = dir.join(format!("{}_overlay.png", flat.join("_")));
    std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))
}
