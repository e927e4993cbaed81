//! Opening a model by spec (path, built-in name, or user model in the models directory).

use std::path::Path;

use tch::Device;

use super::registry::{self, RegistryError, ResolvedModel};
use super::weights::{Model, ModelError};

#[derive(Debug, thiserror::Error)]
pub enum OpenModelError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A loaded model and what cellpose would treat as its diam_mean.
pub struct LoadedModel {
    pub model: Model,
    pub source: ResolvedModel,
}

impl LoadedModel {
    /// Built-ins use cellpose's fixed diam_mean (30; nuclei 17), other models the stored value.
    pub fn diam_mean(&self) -> f64 {
        self.source.builtin_diam_mean.unwrap_or_else(|| self.model.net.diam_mean())
    }
}

/// Resolves `spec` like cellpose and loads it onto `device`.
pub fn open_model(spec: &str, models_dir: &Path, device: Device) -> Result<LoadedModel, OpenModelError> {
    let source = registry::resolve(spec, models_dir)?;
    let model = Model::load(&source.path, device)?;
    Ok(LoadedModel { model, source })
}
