//! Which network a model file holds: cellpose 3's CPnet or cellpose 4's Cellpose-SAM (cpsam).
//!
//! cellpose 4 tells its files by the `W2` key (`vit.BaseModel.load_model`: "This model does not
//! appear to be a CP4 model. CP3 models are not compatible with CP4"); CPnet files start with the
//! first down-sampling block. Both may carry DataParallel's `module.` prefix.

use std::path::Path;

use super::torch_file::{self, ModelFileError};

/// The two model families this product trains and runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    /// cellpose 3 residual U-Net (`cyto3`, `nuclei`, ...), read by cellpose 3.1.1.2.
    Cpnet,
    /// cellpose 4 Cellpose-SAM ViT (`cpsam`, `cpsam_v2`), read by cellpose 4.2.1.1.
    Cpsam,
}

/// The tensor whose presence makes a file a cpsam model (cellpose 4's own test).
pub const CPSAM_MARKER: &str = "W2";
/// The first tensor of every CPnet.
pub const CPNET_MARKER: &str = "downsample.down.res_down_0.conv.conv_0.2.weight";

impl ModelFamily {
    /// Detects the family from tensor names; `None` when the names fit neither.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<ModelFamily> {
        let mut cpnet = false;
        for n in names {
            let n = n.strip_prefix("module.").unwrap_or(n);
            if n == CPSAM_MARKER {
                return Some(ModelFamily::Cpsam);
            }
            cpnet |= n == CPNET_MARKER;
        }
        cpnet.then_some(ModelFamily::Cpnet)
    }

    /// Reads only the file's index (`data.pkl`), not its weights.
    pub fn detect(path: &Path) -> Result<ModelFamily, FamilyError> {
        let metas = torch_file::read_tensor_metas(path)?;
        ModelFamily::from_names(metas.iter().map(|m| m.name.as_str()))
            .ok_or_else(|| FamilyError::Unknown { path: path.display().to_string(), tensors: metas.len() })
    }

    /// How users know the family.
    pub fn describe(self) -> &'static str {
        match self {
            ModelFamily::Cpnet => "cellpose 3 CPnet model (cyto3/nuclei family)",
            ModelFamily::Cpsam => "cellpose 4 Cellpose-SAM model (cpsam family)",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::Cpnet => "cpnet",
            ModelFamily::Cpsam => "cpsam",
        }
    }
}

impl std::fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FamilyError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error(
        "{path}: neither a cellpose 3 CPnet nor a cellpose 4 cpsam state_dict ({tensors} tensors, no `W2` \
         and no `downsample.down.res_down_0...`)"
    )]
    Unknown { path: String, tensors: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w2_marks_cpsam_with_or_without_module_prefix() {
        assert_eq!(ModelFamily::from_names(["diam_mean", "W2"]), Some(ModelFamily::Cpsam));
        assert_eq!(
            ModelFamily::from_names(["module.encoder.pos_embed", "module.W2"]),
            Some(ModelFamily::Cpsam)
        );
        assert_eq!(ModelFamily::from_names(["diam_mean", CPNET_MARKER]), Some(ModelFamily::Cpnet));
        assert_eq!(ModelFamily::from_names(["diam_mean", "encoder.pos_embed"]), None);
    }
}
