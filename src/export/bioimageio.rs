//! `export --format bioimageio`: a cellpose 3 model as a BioImage.IO model package (spec 0.5),
//! written by this project and only checked by Python (`bioimageio test`).
//!
//! The package describes what cellpose's network computes on one image: input `[batch, channel,
//! y, x]` with the model's channels (e.g. cytoplasm, nucleus), normalised per image and channel
//! as cellpose `normalize99` does (1st/99th percentile to 0/1: BioImage.IO `scale_range` over
//! y and x), and the network's flow maps `[batch, 3, y, x]` (dY, dX, cell-probability logit) at
//! the same size. Rescaling by diameter, tiling and mask dynamics stay with cellpose: the
//! README says how to get masks. The test output is computed here (tch, CPU) from the test
//! input; `bioimageio test` recomputes it with cellpose's own CPnet and compares.

use std::path::{Path, PathBuf};

use ndarray::{s, Array3, ArrayD, Axis};
use sha2::{Digest, Sha256};
use tch::Device;

use super::assets::{self, ARCHITECTURE_CALLABLE, ARCHITECTURE_FILE};
use super::docs::{self, TrainingRecord};
use super::rdf::Axis as Axis_;
use super::rdf::*;
use super::ExportError;
use crate::model::Model;
use crate::transforms;

/// What goes into the package besides the model.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Package name; default "Cellpose <model file name>".
    pub name: Option<String>,
    pub description: Option<String>,
    /// At least one (BioImage.IO requires authors).
    pub authors: Vec<String>,
    /// SPDX licence identifier of the weights.
    pub license: String,
    /// The model this one was fine-tuned from (e.g. "cyto3"), for the documentation.
    pub parent: Option<String>,
    /// Image for the test tensors `[C, H, W]` (raw intensities, at least the model's channels);
    /// default a synthetic 128x128 image of cells.
    pub sample: Option<Array3<f32>>,
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    pub rdf: PathBuf,
    pub files: Vec<String>,
    /// Test input `[1, C, H, W]`.
    pub input_shape: Vec<usize>,
    pub max_abs_output: f32,
    pub absolute_tolerance: f64,
    pub relative_tolerance: f64,
}

/// Percentiles of cellpose `normalize99` (and of the package's `scale_range`).
pub const PERCENTILES: (f64, f64) = (1.0, 99.0);
/// `scale_range`'s default `eps`, added to the range as `bioimageio.core` does.
const SCALE_RANGE_EPS: f64 = 1e-6;
/// Input sides are a multiple of 8: CPnet pools three times and must upsample back exactly.
const SIZE_STEP: i64 = 8;
const RELATIVE_TOLERANCE: f64 = 1e-3;

/// Writes the package for the cellpose 3 model file `model_path` into `out` (created; existing
/// package files are overwritten).
pub fn export_bioimageio(
    model_path: &Path,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    if opts.authors.iter().all(|a| a.trim().is_empty()) {
        return Err(ExportError::NoAuthors);
    }
    let weights = std::fs::read(model_path).map_err(|e| ExportError::io(model_path, e))?;
    let model = Model::load(model_path, Device::Cpu)?;
    let cfg = &model.net.config;
    let nchan = cfg.nchan() as usize;
    let raw = test_image(opts.sample.as_ref(), nchan)?;
    let normalized = scale_range(&raw);
    let maps = run_network(&model, &normalized)?;
    let max_abs = maps.iter().fold(0f32, |m, v| m.max(v.abs()));
    // the checker refuses an absolute tolerance above 1% of the largest test value
    let absolute_tolerance = (1e-3f64).min(0.01 * max_abs as f64).max(1e-6);

    std::fs::create_dir_all(out).map_err(|e| ExportError::io(out, e))?;
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<FileRef, ExportError> {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| ExportError::io(&path, e))?;
        files.push(name.to_string());
        Ok(FileRef { source: name.to_string(), sha256: sha256_hex(bytes) })
    };
    let (h, w) = (raw.dim().1, raw.dim().2);
    let input_nd = raw.clone().into_shape_with_order(vec![1, nchan, h, w]).map_err(ExportError::shape)?;
    let test_in = put("test_input.npy", &assets::npy_f32(&input_nd))?;
    let test_out = put("test_output.npy", &assets::npy_f32(&maps))?;
    let weights_ref = put("weights.pt", &weights)?;
    let arch = put(ARCHITECTURE_FILE, assets::architecture_source().as_bytes())?;
    let env = put("environment.yaml", assets::environment_yaml().as_bytes())?;
    let cellprob = maps.slice(s![0, 2, .., ..]).to_owned();
    let cover = assets::cover_png(normalized.view(), cellprob.view()).map_err(ExportError::Cover)?;
    let cover = put("cover.png", &cover)?;

    let record = TrainingRecord::beside(model_path);
    let stem = model_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = opts.name.clone().unwrap_or_else(|| format!("Cellpose {}", docs::clean_name(&stem)));
    let diam = (model.net.diam_mean(), model.net.diam_labels());
    let readme = docs::readme(&docs::DocInput {
        name: &name,
        file: &stem,
        nbase: &cfg.nbase,
        nout: cfg.nout,
        diam_mean: diam.0,
        diam_labels: diam.1,
        parent: opts.parent.as_deref(),
        record: record.as_ref(),
    });
    let readme = put("README.md", readme.as_bytes())?;

    let channel_names: Vec<String> = match nchan {
        2 => vec!["cytoplasm".into(), "nucleus".into()],
        n => (0..n).map(|i| format!("channel{i}")).collect(),
    };
    let output_names: Vec<String> = (0..cfg.nout)
        .map(|i| match i {
            0 => "dy".to_string(),
            1 => "dx".to_string(),
            2 => "cellprob".to_string(),
            k => format!("class{}", k - 3),
        })
        .collect();
    let space =
        |id: &'static str| Axis_::Space { id, size: Size::Parameterized { min: 16, step: SIZE_STEP } };
    let same =
        |id: &'static str| Axis_::Space { id, size: Size::Reference { tensor_id: "raw", axis_id: id } };
    let kwargs = [
        ("nbase", serde_json::json!(cfg.nbase)),
        ("nout", serde_json::json!(cfg.nout)),
        ("sz", serde_json::json!(cfg.kernel)),
        ("mkldnn", serde_json::json!(false)),
        ("max_pool", serde_json::json!(true)),
        ("diam_mean", serde_json::json!(diam.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let rdf = Rdf {
        format_version: FORMAT_VERSION,
        kind: "model",
        name: name.clone(),
        description: opts.description.clone().unwrap_or_else(|| {
            format!(
                "Cellpose {} network (flows and cell probability) for 2-D cell segmentation.",
                assets::CELLPOSE_VERSION
            )
        }),
        authors: opts
            .authors
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| Author { name: a.trim().to_string(), affiliation: None })
            .collect(),
        cite: docs::citations(),
        license: opts.license.clone(),
        tags: ["cellpose", "segmentation", "instance-segmentation", "2d", "pytorch", "cells"]
            .map(String::from)
            .to_vec(),
        documentation: readme,
        covers: vec![cover],
        timestamp: timestamp(),
        inputs: vec![InputTensor {
            id: "raw",
            description: "Image, one channel per network input (cellpose channels), any intensity scale."
                .into(),
            axes: vec![Axis_::Batch, Axis_::Channel { channel_names }, space("y"), space("x")],
            test_tensor: test_in,
            data: DataType { kind: "float32" },
            preprocessing: vec![Processing {
                id: "scale_range",
                kwargs: ScaleRangeKwargs {
                    axes: vec!["y", "x"],
                    min_percentile: PERCENTILES.0,
                    max_percentile: PERCENTILES.1,
                },
            }],
        }],
        outputs: vec![OutputTensor {
            id: "flows",
            description: "dY, dX flows and the cell-probability logit (cellpose network output).".into(),
            axes: vec![Axis_::Batch, Axis_::Channel { channel_names: output_names }, same("y"), same("x")],
            test_tensor: test_out,
            data: DataType { kind: "float32" },
        }],
        weights: Weights {
            pytorch_state_dict: PytorchStateDict {
                source: weights_ref.source,
                sha256: weights_ref.sha256,
                architecture: Architecture {
                    source: arch.source,
                    sha256: arch.sha256,
                    callable: ARCHITECTURE_CALLABLE,
                    kwargs,
                },
                pytorch_version: assets::PYTORCH_VERSION.into(),
                dependencies: env,
            },
        },
        config: Config {
            bioimageio: BioimageioConfig {
                reproducibility_tolerance: vec![Tolerance {
                    relative_tolerance: RELATIVE_TOLERANCE,
                    absolute_tolerance,
                    mismatched_elements_per_million: 100,
                }],
            },
            cellpose: docs::config_json(diam, opts.parent.as_deref(), record.as_ref()),
        },
    };
    let yaml = serde_yaml_ng::to_string(&rdf).map_err(|e| ExportError::Yaml(e.to_string()))?;
    let rdf_path = out.join("rdf.yaml");
    std::fs::write(&rdf_path, yaml).map_err(|e| ExportError::io(&rdf_path, e))?;
    files.push("rdf.yaml".into());
    Ok(ExportSummary {
        rdf: rdf_path,
        files,
        input_shape: vec![1, nchan, h, w],
        max_abs_output: max_abs,
        absolute_tolerance,
        relative_tolerance: RELATIVE_TOLERANCE,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "2026-01-01T00:00:00Z".into())
}

/// The test image: the sample's first `nchan` channels (or a synthetic image), cropped to a
/// multiple of 8 and at most 256 pixels a side.
fn test_image(sample: Option<&Array3<f32>>, nchan: usize) -> Result<Array3<f32>, ExportError> {
    let img = match sample {
        Some(s) => s.clone(),
        None => {
            let (img, _) = crate::synthetic::synth_image(&crate::synthetic::SynthSpec::default());
            img
        }
    };
    let (c, h, w) = img.dim();
    if c == 0 {
        return Err(ExportError::SampleChannels { found: 0, needed: nchan });
    }
    if sample.is_some() && c < nchan {
        return Err(ExportError::SampleChannels { found: c, needed: nchan });
    }
    let side = |n: usize| (n.min(256) / SIZE_STEP as usize) * SIZE_STEP as usize;
    let (th, tw) = (side(h), side(w));
    if th < 16 || tw < 16 {
        return Err(ExportError::SampleTooSmall { height: h, width: w });
    }
    // a synthetic image has 2 channels: repeat them for models with more
    let mut out = Array3::<f32>::zeros((nchan, th, tw));
    for k in 0..nchan {
        out.index_axis_mut(Axis(0), k).assign(&img.slice(s![k % c, ..th, ..tw]));
    }
    Ok(out)
}

/// BioImage.IO `scale_range` over y and x per channel, as `bioimageio.core` computes it:
/// `(x - q_lo) / (q_hi - q_lo + eps)` with numpy's linear quantiles.
fn scale_range(img: &Array3<f32>) -> Array3<f32> {
    let mut out = img.clone();
    for mut ch in out.axis_iter_mut(Axis(0)) {
        let mut v: Vec<f32> = ch.iter().copied().collect();
        let lo = transforms::percentile(&mut v, PERCENTILES.0);
        let hi = transforms::percentile(&mut v, PERCENTILES.1);
        ch.mapv_inplace(|x| ((x as f64 - lo) / (hi - lo + SCALE_RANGE_EPS)) as f32);
    }
    out
}

/// The network's maps for one normalised image, `[1, nout, H, W]`.
fn run_network(model: &Model, img: &Array3<f32>) -> Result<ArrayD<f32>, ExportError> {
    let x = transforms::f_array3_to_tensor(img)?.f_unsqueeze(0)?;
    let maps =
        tch::no_grad(|| model.net.forward_t(&x, false))?.maps.f_to_kind(tch::Kind::Float)?.f_contiguous()?;
    let shape: Vec<usize> = maps.size().iter().map(|&d| d as usize).collect();
    let n = shape.iter().product::<usize>();
    let mut data = vec![0f32; n];
    maps.f_copy_data(&mut data, n)?;
    ArrayD::from_shape_vec(shape, data).map_err(ExportError::shape)
}
