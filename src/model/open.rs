//! Opening a model by spec (path, built-in name, or user model in the models directory), of one
//! family ([`open_model`], CPnet) or of whichever the file holds ([`open_any`]).

use std::path::Path;

use tch::Device;

use super::cpsam::CpsamModel;
use super::family::ModelFamily;
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

/// A loaded cpsam model. cellpose 4 rescales by `30 / diameter` whatever the file stores.
pub struct LoadedCpsam {
    pub model: CpsamModel,
    pub source: ResolvedModel,
}

/// A model of either family, opened from whatever the spec names.
pub enum AnyModel {
    // boxed: the two differ much in size (a cpsam model carries its ViT blocks inline)
    Cpnet(Box<LoadedModel>),
    Cpsam(Box<LoadedCpsam>),
}

impl AnyModel {
    pub fn family(&self) -> ModelFamily {
        match self {
            AnyModel::Cpnet(_) => ModelFamily::Cpnet,
            AnyModel::Cpsam(_) => ModelFamily::Cpsam,
        }
    }
    pub fn source(&self) -> &ResolvedModel {
        match self {
            AnyModel::Cpnet(m) => &m.source,
            AnyModel::Cpsam(m) => &m.source,
        }
    }
}

/// Resolves `spec` (path, built-in of either family, user model), detects the family from the
/// file's keys and loads it onto `device`.
pub fn open_any(spec: &str, models_dir: &Path, device: Device) -> Result<AnyModel, OpenModelError> {
    let source = registry::resolve(spec, models_dir)?;
    let family = ModelFamily::detect(&source.path).map_err(ModelError::from)?;
    Ok(match family {
        ModelFamily::Cpnet => {
            AnyModel::Cpnet(Box::new(LoadedModel { model: Model::load(&source.path, device)?, source }))
        }
        ModelFamily::Cpsam => {
            AnyModel::Cpsam(Box::new(LoadedCpsam { model: CpsamModel::load(&source.path, device)?, source }))
        }
    })
}
