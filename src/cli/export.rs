//! `export --format bioimageio --model M --out DIR`: a cellpose 3 (CPnet) or cellpose 4
//! (Cellpose-SAM) model as a BioImage.IO package ([`crate::export::export_bioimageio`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::cli::common::ModelsDirArg;
use crate::export::{self, ExportOptions};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// BioImage.IO model package, spec 0.5 (rdf.yaml, pytorch_state_dict weights, test tensors).
    Bioimageio,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "bioimageio")]
    pub format: ExportFormat,
    /// Model to export: a file, a built-in name or a model in the models folder (either family).
    #[arg(long)]
    pub model: String,
    /// Folder the package is written to (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Package name (default: "Cellpose <model file name>").
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// An author of the model; repeat for several (BioImage.IO requires one).
    #[arg(long = "author", required = true)]
    pub authors: Vec<String>,
    /// SPDX licence identifier of the weights.
    #[arg(long, default_value = "CC-BY-4.0")]
    pub license: String,
    /// The model this one was fine-tuned from (documented in the package).
    #[arg(long)]
    pub parent: Option<String>,
    /// Image for the package's test tensors: for a CPnet at least the model's channels, cropped
    /// to 256x256; for Cellpose-SAM up to 3 channels (missing ones are zeros), cropped or padded
    /// to one 256x256 tile. Default: a synthetic image of cells.
    #[arg(long)]
    pub sample: Option<PathBuf>,
    #[command(flatten)]
    pub models_dir: ModelsDirArg,
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let ExportFormat::Bioimageio = args.format;
    let resolved = crate::model::registry::resolve(&args.model, &args.models_dir.resolve())?;
    let sample = args
        .sample
        .as_ref()
        .map(|p| crate::imageio::read_image(p))
        .transpose()
        .context("failed to read the --sample image")?;
    let opts = ExportOptions {
        name: args.name.clone(),
        description: args.description.clone(),
        authors: args.authors.clone(),
        license: args.license.clone(),
        parent: args.parent.clone(),
        sample,
    };
    let summary = export::export_bioimageio(&resolved.path, &args.out, &opts)
        .with_context(|| format!("failed to export {}", resolved.path.display()))?;
    eprintln!(
        ">>>> BioImage.IO package of a {} written to {} ({} files; test input {:?}, tolerance abs {:.1e} rel {:.0e})",
        summary.family.describe(),
        args.out.display(),
        summary.files.len(),
        summary.input_shape,
        summary.absolute_tolerance,
        summary.relative_tolerance
    );
    println!("{}", summary.rdf.display());
    Ok(ExitCode::SUCCESS)
}
