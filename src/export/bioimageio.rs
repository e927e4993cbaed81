//! `export --format bioimageio`: a cellpose model as a BioImage.IO model package (spec 0.5),
//! written by this project and only checked by Python (`bioimageio test`).
//!
//! The package describes what cellpose's network computes on one image: input `[batch, channel,
//! y, x]` with the model's channels, normalised per image and channel as cellpose `normalize99`
//! does (1st/99th percentile to 0/1: BioImage.IO `scale_range` over y and x), and the network's
//! flow maps `[batch, 3, y, x]` (dY, dX, cell-probability logit) at the same size. Rescaling by
//! diameter, tiling and mask dynamics stay with cellpose: the README says how to get masks. The
//! test output is computed here (tch, CPU) from the test input; `bioimageio test` recomputes it
//! with cellpose's own network class and compares.
//!
//! This file is the package layout both families share ([`write_package`]); what differs (the
//! weights file, the architecture source, the axes, the network's description and its test
//! output) each family's module gives as a [`Network`] (`cpnet.rs`, `cpsam.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{s, Array3, ArrayD, Axis};
use sha2::{Digest, Sha256};

use super::assets;
use super::docs::{self, TrainingRecord};
use super::rdf::Axis as Axis_;
use super::rdf::*;
use super::ExportError;
use crate::model::ModelFamily;
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
    /// Image for the test tensors `[C, H, W]` (raw intensities); default a synthetic image of
    /// cells.
    pub sample: Option<Array3<f32>>,
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    pub family: ModelFamily,
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
const RELATIVE_TOLERANCE: f64 = 1e-3;

/// Writes the weights file to the path it is given.
pub(super) type WriteWeights<'a> = Box<dyn FnOnce(&Path) -> Result<(), ExportError> + 'a>;

/// How the weights file gets into the package.
pub(super) enum WeightsFile<'a> {
    /// The model file itself, byte for byte.
    Copy(&'a Path),
    /// Written by the family (e.g. an fp32 copy of a bf16 file) to the path given.
    Write(WriteWeights<'a>),
}

/// The Python class the checker builds (`callable(**kwargs)`, then `load_state_dict`).
pub(super) struct ArchitectureFile {
    pub file: &'static str,
    pub callable: &'static str,
    pub source: String,
    pub kwargs: BTreeMap<String, serde_json::Value>,
}

/// What one model family gives the package.
pub(super) struct Network<'a> {
    pub family: ModelFamily,
    /// The cellpose release the architecture and environment are written for.
    pub cellpose_version: &'static str,
    pub weights: WeightsFile<'a>,
    pub architecture: ArchitectureFile,
    pub channel_names: Vec<String>,
    /// Size of the input's y and x axes.
    pub space: Size,
    pub input_description: String,
    /// Test input, raw intensities `[C, H, W]`, and the same after `scale_range`.
    pub raw: Array3<f32>,
    pub normalized: Array3<f32>,
    /// The network's output on `normalized`, `[1, nout, H, W]`.
    pub maps: ArrayD<f32>,
    pub diam: (f64, f64),
    /// README sections `## Network` and `## Masks`.
    pub readme_network: String,
    /// Default package description.
    pub description: String,
    pub tags: &'static [&'static str],
}

/// Writes the package of `net` (made from the model file `model_path`) into `out` (created;
/// existing package files are overwritten).
pub(super) fn write_package(
    model_path: &Path,
    out: &Path,
    opts: &ExportOptions,
    net: Network,
) -> Result<ExportSummary, ExportError> {
    let Network { raw, normalized, maps, weights, architecture, .. } = net;
    let nchan = raw.dim().0;
    let max_abs = maps.iter().fold(0f32, |m, v| m.max(v.abs()));
    // the checker refuses an absolute tolerance above 1% of the largest test value
    let absolute_tolerance = (1e-3f64).min(0.01 * max_abs as f64).max(1e-6);

    std::fs::create_dir_all(out).map_err(|e| ExportError::io(out, e))?;
    let weights_ref = write_weights(weights, out)?;
    let mut files = vec![weights_ref.source.clone()];
    let mut put = |name: &str, bytes: &[u8]| -> Result<FileRef, ExportError> {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| ExportError::io(&path, e))?;
        files.push(name.to_string());
        Ok(FileRef { source: name.to_string(), sha256: sha256_hex(bytes) })
    };
    let (h, w) = (raw.dim().1, raw.dim().2);
    let input_nd = raw.into_shape_with_order(vec![1, nchan, h, w]).map_err(ExportError::shape)?;
    let test_in = put("test_input.npy", &assets::npy_f32(&input_nd))?;
    let test_out = put("test_output.npy", &assets::npy_f32(&maps))?;
    let arch = put(architecture.file, architecture.source.as_bytes())?;
    let env = put("environment.yaml", assets::environment_yaml(net.cellpose_version).as_bytes())?;
    let cellprob = maps.slice(s![0, 2, .., ..]).to_owned();
    let cover = assets::cover_png(normalized.view(), cellprob.view()).map_err(ExportError::Cover)?;
    let cover = put("cover.png", &cover)?;

    let record = TrainingRecord::beside(model_path);
    let stem = model_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = opts.name.clone().unwrap_or_else(|| format!("Cellpose {}", docs::clean_name(&stem)));
    let readme = docs::readme(&docs::DocInput {
        name: &name,
        file: &stem,
        cellpose_version: net.cellpose_version,
        network: &net.readme_network,
        parent: opts.parent.as_deref(),
        record: record.as_ref(),
    });
    let readme = put("README.md", readme.as_bytes())?;

    let output_names: Vec<String> = (0..maps.shape()[1])
        .map(|i| match i {
            0 => "dy".to_string(),
            1 => "dx".to_string(),
            2 => "cellprob".to_string(),
            k => format!("class{}", k - 3),
        })
        .collect();
    let space = |id: &'static str| Axis_::Space { id, size: net.space.clone() };
    // the output has the input's size; the checker takes a reference only to a variable size
    let same = |id: &'static str| Axis_::Space {
        id,
        size: match net.space {
            Size::Fixed(n) => Size::Fixed(n),
            _ => Size::Reference { tensor_id: "raw", axis_id: id },
        },
    };
    let rdf = Rdf {
        format_version: FORMAT_VERSION,
        kind: "model",
        name: name.clone(),
        description: opts.description.clone().unwrap_or(net.description),
        authors: opts
            .authors
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| Author { name: a.trim().to_string(), affiliation: None })
            .collect(),
        cite: docs::citations(net.family),
        license: opts.license.clone(),
        tags: net.tags.iter().map(|t| t.to_string()).collect(),
        documentation: readme,
        covers: vec![cover],
        timestamp: timestamp(),
        inputs: vec![InputTensor {
            id: "raw",
            description: net.input_description,
            axes: vec![
                Axis_::Batch,
                Axis_::Channel { channel_names: net.channel_names },
                space("y"),
                space("x"),
            ],
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
                    callable: architecture.callable,
                    kwargs: architecture.kwargs,
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
            cellpose: docs::config_json(
                net.cellpose_version,
                net.diam,
                opts.parent.as_deref(),
                record.as_ref(),
            ),
        },
    };
    let yaml = serde_yaml_ng::to_string(&rdf).map_err(|e| ExportError::Yaml(e.to_string()))?;
    let rdf_path = out.join("rdf.yaml");
    std::fs::write(&rdf_path, yaml).map_err(|e| ExportError::io(&rdf_path, e))?;
    files.push("rdf.yaml".into());
    Ok(ExportSummary {
        family: net.family,
        rdf: rdf_path,
        files,
        input_shape: vec![1, nchan, h, w],
        max_abs_output: max_abs,
        absolute_tolerance,
        relative_tolerance: RELATIVE_TOLERANCE,
    })
}

/// `weights.pt`, copied or written, then hashed from the disk in chunks (a Cellpose-SAM file
/// is 1.2 GB: it is never held in memory).
fn write_weights(weights: WeightsFile, out: &Path) -> Result<FileRef, ExportError> {
    const NAME: &str = "weights.pt";
    let path = out.join(NAME);
    match weights {
        WeightsFile::Copy(src) => {
            std::fs::copy(src, &path).map_err(|e| ExportError::io(src, e))?;
        }
        WeightsFile::Write(write) => write(&path)?,
    }
    let mut file = std::fs::File::open(&path).map_err(|e| ExportError::io(&path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| ExportError::io(&path, e))?;
    Ok(FileRef { source: NAME.into(), sha256: hex(&hasher.finalize()) })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "2026-01-01T00:00:00Z".into())
}

/// How a family sizes its test image.
pub(super) enum Sizing {
    /// Cropped to a multiple of `step`, at most `max` and at least `min` pixels a side (CPnet).
    Crop { step: usize, min: usize, max: usize },
    /// Exactly `side` x `side`: cropped, or padded by repeating the last row and column
    /// (Cellpose-SAM takes one tile of its position grid).
    Exact(usize),
}

/// What fills channels the image lacks.
#[derive(Clone, Copy)]
pub(super) enum MissingChannels {
    /// The image's channels again (a synthetic 2-channel image for a wider CPnet).
    Repeat,
    /// Zeros, as cellpose 4 pads images with fewer than 3 channels.
    Zeros,
}

/// The test image: the sample's first `nchan` channels (or a synthetic image), sized as `sizing`
/// says. `need_all`: a sample with fewer than `nchan` channels is an error (CPnet).
pub(super) fn test_image(
    sample: Option<&Array3<f32>>,
    nchan: usize,
    need_all: bool,
    missing: MissingChannels,
    sizing: Sizing,
) -> Result<Array3<f32>, ExportError> {
    let img = match sample {
        Some(s) => s.clone(),
        None => {
            let side = match sizing {
                Sizing::Exact(n) => n,
                Sizing::Crop { .. } => 128,
            };
            let spec = crate::synthetic::SynthSpec {
                height: side,
                width: side,
                n_cells: 12 * (side * side).div_ceil(128 * 128),
                ..Default::default()
            };
            crate::synthetic::synth_image(&spec).0
        }
    };
    let (c, h, w) = img.dim();
    if c == 0 || (sample.is_some() && need_all && c < nchan) {
        return Err(ExportError::SampleChannels { found: c, needed: nchan });
    }
    let (th, tw) = match sizing {
        Sizing::Crop { step, min, max } => {
            let side = |n: usize| (n.min(max) / step) * step;
            let (th, tw) = (side(h), side(w));
            if th < min || tw < min {
                return Err(ExportError::SampleTooSmall { height: h, width: w, min });
            }
            (th, tw)
        }
        Sizing::Exact(n) => (n, n),
    };
    if h == 0 || w == 0 {
        return Err(ExportError::SampleTooSmall { height: h, width: w, min: 1 });
    }
    let mut out = Array3::<f32>::zeros((nchan, th, tw));
    for k in 0..nchan {
        let src = match missing {
            _ if k < c => k,
            MissingChannels::Repeat => k % c,
            MissingChannels::Zeros => continue,
        };
        let chan = img.index_axis(Axis(0), src);
        out.index_axis_mut(Axis(0), k)
            .indexed_iter_mut()
            .for_each(|((y, x), v)| *v = chan[(y.min(h - 1), x.min(w - 1))]);
    }
    Ok(out)
}

/// BioImage.IO `scale_range` over y and x per channel, as `bioimageio.core` computes it:
/// `(x - q_lo) / (q_hi - q_lo + eps)` with numpy's linear quantiles.
pub(super) fn scale_range(img: &Array3<f32>) -> Array3<f32> {
    let mut out = img.clone();
    for mut ch in out.axis_iter_mut(Axis(0)) {
        let mut v: Vec<f32> = ch.iter().copied().collect();
        let lo = transforms::percentile(&mut v, PERCENTILES.0);
        let hi = transforms::percentile(&mut v, PERCENTILES.1);
        ch.mapv_inplace(|x| ((x as f64 - lo) / (hi - lo + SCALE_RANGE_EPS)) as f32);
    }
    out
}

/// A `[1, C, H, W]` float tensor as an array (the network's output for the test tensors).
pub(super) fn tensor_to_array(t: &tch::Tensor) -> Result<ArrayD<f32>, ExportError> {
    let t = t.f_to_kind(tch::Kind::Float)?.f_contiguous()?;
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let n = shape.iter().product::<usize>();
    let mut data = vec![0f32; n];
    t.f_copy_data(&mut data, n)?;
    ArrayD::from_shape_vec(shape, data).map_err(ExportError::shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sizing_pads_by_repeating_the_edge_and_zero_fills_missing_channels() {
        let img = Array3::from_shape_fn((2, 3, 4), |(c, y, x)| (c * 100 + y * 10 + x) as f32);
        let out = test_image(Some(&img), 3, false, MissingChannels::Zeros, Sizing::Exact(6)).unwrap();
        assert_eq!(out.dim(), (3, 6, 6));
        assert_eq!(out[(1, 1, 2)], 112.0);
        assert_eq!(out[(0, 5, 5)], 23.0); // last row and column repeated
        assert!(out.index_axis(Axis(0), 2).iter().all(|&v| v == 0.0));
        let crop = test_image(Some(&img), 3, true, MissingChannels::Repeat, Sizing::Exact(2));
        assert!(matches!(crop, Err(ExportError::SampleChannels { found: 2, needed: 3 })));
    }
}
