//! Model packages for sharing: [`export_bioimageio`] writes a BioImage.IO model package (spec
//! 0.5) for a cellpose 3 (CPnet) or cellpose 4 (Cellpose-SAM) model. The CLI's `export` calls
//! it; the training job calls it on the model it uploads.

mod assets;
mod bioimageio;
mod cpnet;
mod cpsam;
mod docs;
mod rdf;

use std::path::{Path, PathBuf};

pub use bioimageio::{ExportOptions, ExportSummary, PERCENTILES};

use crate::model::ModelFamily;

/// Why a package could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("BioImage.IO needs at least one author: give --author NAME")]
    NoAuthors,
    #[error("failed to read or write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("this Cellpose-SAM model cannot be described for BioImage.IO: {0}")]
    Unsupported(String),
    #[error("the sample image has {found} channels but the model takes {needed}: give an image with at least {needed}")]
    SampleChannels { found: usize, needed: usize },
    #[error("the sample image is {height}x{width}; give one of at least {min}x{min} pixels")]
    SampleTooSmall { height: usize, width: usize, min: usize },
    #[error("running the network on the test image failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("internal array shape error: {0}")]
    Shape(String),
    #[error("drawing the cover image failed: {0}")]
    Cover(String),
    #[error("writing rdf.yaml failed: {0}")]
    Yaml(String),
}

impl ExportError {
    fn io(path: &Path, source: std::io::Error) -> ExportError {
        ExportError::Io { path: path.to_path_buf(), source }
    }

    fn shape(e: ndarray::ShapeError) -> ExportError {
        ExportError::Shape(e.to_string())
    }
}

/// Writes the package of the model file `model_path` (either family, told by its tensors) into
/// `out` (created; existing package files are overwritten).
pub fn export_bioimageio(
    model_path: &Path,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    if opts.authors.iter().all(|a| a.trim().is_empty()) {
        return Err(ExportError::NoAuthors);
    }
    let family = ModelFamily::detect(model_path).map_err(crate::model::ModelError::from)?;
    let network = match family {
        ModelFamily::Cpnet => cpnet::network(model_path, opts.sample.as_ref())?,
        ModelFamily::Cpsam => cpsam::network(model_path, opts.sample.as_ref())?,
    };
    bioimageio::write_package(model_path, out, opts, network)
}
