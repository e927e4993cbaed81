//! The BioImage.IO model description (`rdf.yaml`, bioimageio spec 0.5, model format 0.5.14 as
//! `bioimageio.spec` 0.5.14.3 implements it) as plain serde types: only the fields this package
//! fills, in the spec's names, so serde_yaml writes exactly what the checker reads.

use std::collections::BTreeMap;

use serde::Serialize;

/// Model format version written (`bioimageio.spec` 0.5.14.x's `ModelDescr.implemented_format_version`).
pub(crate) const FORMAT_VERSION: &str = "0.5.14";

#[derive(Debug, Clone, Serialize)]
pub struct Rdf {
    pub format_version: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub description: String,
    pub authors: Vec<Author>,
    pub cite: Vec<Cite>,
    pub license: String,
    pub tags: Vec<String>,
    pub documentation: FileRef,
    pub covers: Vec<FileRef>,
    pub timestamp: String,
    pub inputs: Vec<InputTensor>,
    pub outputs: Vec<OutputTensor>,
    pub weights: Weights,
    pub config: Config,
}

#[derive(Debug, Clone, Serialize)]
pub struct Author {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affiliation: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cite {
    pub text: String,
    pub doi: String,
}

/// A file of the package with its checksum.
#[derive(Debug, Clone, Serialize)]
pub struct FileRef {
    pub source: String,
    pub sha256: String,
}

/// One axis of a tensor (`type` plus the fields that type takes).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Axis {
    Batch,
    Channel { channel_names: Vec<String> },
    Space { id: &'static str, size: Size },
}

/// An axis size: fixed (a Cellpose-SAM tile), a parameterized `min + n * step` (CPnet inputs)
/// or that of an input axis (outputs).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Size {
    Fixed(i64),
    Parameterized { min: i64, step: i64 },
    Reference { tensor_id: &'static str, axis_id: &'static str },
}

#[derive(Debug, Clone, Serialize)]
pub struct DataType {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputTensor {
    pub id: &'static str,
    pub description: String,
    pub axes: Vec<Axis>,
    pub test_tensor: FileRef,
    pub data: DataType,
    pub preprocessing: Vec<Processing>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputTensor {
    pub id: &'static str,
    pub description: String,
    pub axes: Vec<Axis>,
    pub test_tensor: FileRef,
    pub data: DataType,
}

/// `scale_range`: `(x - p_min) / (p_max - p_min + eps)` with percentiles over `axes`.
#[derive(Debug, Clone, Serialize)]
pub struct Processing {
    pub id: &'static str,
    pub kwargs: ScaleRangeKwargs,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleRangeKwargs {
    pub axes: Vec<&'static str>,
    pub min_percentile: f64,
    pub max_percentile: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Weights {
    pub pytorch_state_dict: PytorchStateDict,
}

#[derive(Debug, Clone, Serialize)]
pub struct PytorchStateDict {
    pub source: String,
    pub sha256: String,
    pub architecture: Architecture,
    pub pytorch_version: String,
    pub dependencies: FileRef,
}

/// A class in a Python file of the package, and its constructor arguments.
#[derive(Debug, Clone, Serialize)]
pub struct Architecture {
    pub source: String,
    pub sha256: String,
    pub callable: &'static str,
    pub kwargs: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub bioimageio: BioimageioConfig,
    /// What cellpose needs beyond the network: diameters, parent model, validation scores.
    pub cellpose: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct BioimageioConfig {
    pub reproducibility_tolerance: Vec<Tolerance>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tolerance {
    pub relative_tolerance: f64,
    pub absolute_tolerance: f64,
    pub mismatched_elements_per_million: u32,
}
