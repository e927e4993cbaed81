//! `synth`: write a folder of synthetic 2-channel cell images with masks (for trying things out,
//! benchmarks and tests).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::synthetic::{write_folder, SynthSpec};

#[derive(Args, Debug)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// Image height and width.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Cells per image.
    #[arg(long, default_value_t = 40)]
    pub cells: usize,
    /// Cell radius range "min,max" in pixels.
    #[arg(long, default_value = "8,13", value_parser = parse_range)]
    pub radius: (f64, f64),
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once(',').ok_or_else(|| format!("expected min,max (got `{s}`)"))?;
    let (a, b) = (
        a.trim().parse::<f64>().map_err(|e| e.to_string())?,
        b.trim().parse::<f64>().map_err(|e| e.to_string())?,
    );
    if !(a > 0.0 && b >= a) {
        return Err(format!("need 0 < min <= max (got {a},{b})"));
    }
    Ok((a, b))
}

pub fn run(args: SynthArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.size >= 16, "--size must be at least 16");
    let spec = SynthSpec {
        height: args.size,
        width: args.size,
        n_cells: args.cells,
        radius: args.radius,
        seed: args.seed,
    };
    let files = write_folder(&args.out, args.n, &spec)?;
    eprintln!("wrote {} images with masks to {}", files.len(), args.out.display());
    Ok(ExitCode::SUCCESS)
}
