//! Model packages for sharing: [`export_bioimageio`] writes a BioImage.IO model package (spec
//! 0.5) for a cellpose 3 model. The CLI's `export` calls it; the training job can call it on the
//! model it uploads.

mod assets;
mod bioimageio;
mod docs;
mod rdf;

use std::path::{Path, PathBuf};

pub use bioimageio::{export_bioimageio, ExportOptions, ExportSummary, PERCENTILES};

/// Why a package could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("BioImage.IO needs at least one author: give --author NAME")]
    NoAuthors,
    #[error("failed to read or write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}; only cellpose 3 (CPnet) models can be exported to BioImage.IO for now")]
    Model(#[from] crate::model::ModelError),
    #[error("the sample image has {found} channels but the model takes {needed}: give an image with at least {needed}")]
    SampleChannels { found: usize, needed: usize },
    #[error("the sample image is {height}x{width}; give one of at least 16x16 pixels")]
    SampleTooSmall { height: usize, width: usize },
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
