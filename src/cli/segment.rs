//! `segment`: images -> `<base>_masks.tif` (and `<base>_flows.tif`) with a model, as cellpose's
//! CLI `--save_tif` does for a folder or one image.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::common::{FolderArgs, SegmentFlags};
use crate::evaluate::{self, output_paths};

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["dir", "image"]))]
pub struct SegmentArgs {
    /// Folder of images (mask and flow outputs in it are skipped).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// One image (TIFF or PNG).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Output folder (default: next to each image).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write `<base>_flows.tif`: float32 pages dY, dX, cellprob.
    #[arg(long)]
    pub save_flows: bool,
    #[command(flatten)]
    pub folder: FolderArgs,
    /// Replace existing `<base>_masks.tif` files that `segment` did not write (e.g. ground truth).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub flags: SegmentFlags,
}

pub fn run(args: SegmentArgs) -> anyhow::Result<ExitCode> {
    let (loaded, settings, device) = args.flags.open()?;
    let images = match (&args.dir, &args.image) {
        (Some(dir), _) => crate::train::find_images(
            dir,
            &args.folder.img_filter,
            &args.folder.mask_filter,
            args.folder.look_one_level_down,
        )?,
        (None, Some(image)) => vec![image.clone()],
        (None, None) => anyhow::bail!("give --dir or --image"),
    };
    if let Some(out) = args.out.as_deref().filter(|o| o.exists() && !o.is_dir()) {
        anyhow::bail!(
            "--out {} is a file; --out takes a folder to write <base>_masks.tif into (it is created when missing)",
            out.display()
        );
    }
    let jobs: Vec<_> =
        images.iter().map(|i| (i, output_paths(i, args.dir.as_deref(), args.out.as_deref()))).collect();
    // ground truth is never replaced unasked: check every output before segmenting anything
    for (_, paths) in &jobs {
        let ours = crate::imageio::tiff_description(&paths.masks)
            .is_some_and(|d| d == crate::imageio::SEGMENT_MASKS_DESCRIPTION);
        if paths.masks.exists() && !ours && !args.overwrite {
            anyhow::bail!(
                "{} exists and was not written by `segment` (ground truth?); write the masks elsewhere \
                 with --out DIR, or pass --overwrite to replace it",
                paths.masks.display()
            );
        }
    }
    for (image, paths) in &jobs {
        let seg = evaluate::segment_file(&loaded, image, &settings, device)?;
        if paths.masks.exists() {
            tracing::info!("replacing {}", paths.masks.display());
        }
        evaluate::write_outputs(&seg, paths, args.save_flows)
            .with_context(|| format!("failed to write the outputs for {}", image.display()))?;
        let n = seg.masks.iter().copied().max().unwrap_or(0);
        eprintln!("{}: {n} masks -> {}", image.display(), paths.masks.display());
    }
    eprintln!(
        "segmented {} image(s) with {} (device {})",
        images.len(),
        loaded.source().path.display(),
        crate::device::describe(device)
    );
    Ok(ExitCode::SUCCESS)
}
