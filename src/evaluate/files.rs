//! Segmenting and scoring files: one image -> `<base>_masks.tif` (and `<base>_flows.tif`), and a
//! folder of images with ground truth -> [`ApSummary`]. Folders are walked as cellpose's CLI walks
//! them ([`crate::train::find_images`], [`crate::train::discover`]), so mask and flow outputs are
//! never segmented again.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use tch::Device;

use super::{
    score_masks, segment_image, segment_image_cp4, ApSummary, EvaluateError, ImageScore, MaskOptions,
    Segmentation,
};
use crate::imageio::{self, ImageError};
use crate::model::{AnyModel, LoadedModel};
use crate::predict::{PredictOptions, Prediction};
use crate::predict_cpsam::Cp4Options;

/// What decides the masks besides the model (cellpose `eval` arguments). A cpsam model reads
/// the same settings with cellpose 4's meaning ([`Cp4Options::from`]: channels ignored, no
/// diam_labels fallback).
#[derive(Debug, Clone, Default)]
pub struct SegmentSettings {
    pub predict: PredictOptions,
    pub masks: MaskOptions,
}

impl From<&PredictOptions> for Cp4Options {
    fn from(p: &PredictOptions) -> Cp4Options {
        Cp4Options {
            normalize: p.normalize,
            diameter: p.diameter,
            tile_overlap: p.tiles.tile_overlap,
            batch_size: p.tiles.batch_size,
            resample: p.resample,
        }
    }
}

/// Segments one image with a model of either family, each with its cellpose version's semantics.
pub fn segment_any(
    model: &AnyModel,
    raw: &Array3<f32>,
    settings: &SegmentSettings,
    device: Device,
) -> Result<Segmentation, EvaluateError> {
    match model {
        AnyModel::Cpnet(m) => {
            segment_image(&m.model, m.diam_mean(), raw, &settings.predict, &settings.masks, device)
        }
        AnyModel::Cpsam(m) => {
            segment_image_cp4(&m.model, raw, &Cp4Options::from(&settings.predict), &settings.masks, device)
        }
    }
}

/// Where the outputs for one image go.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputPaths {
    /// `<base>_masks.tif`: uint16 labels (uint32 above 65535 objects).
    pub masks: PathBuf,
    /// `<base>_flows.tif`: float32 pages dY, dX, cellprob.
    pub flows: PathBuf,
}

/// `<base>_masks.tif` and `<base>_flows.tif` for `image`: next to it, or under `out_dir`
/// keeping the image's folder relative to `root` (so images from subfolders do not collide).
pub fn output_paths(image: &Path, root: Option<&Path>, out_dir: Option<&Path>) -> OutputPaths {
    let base = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = image.parent().unwrap_or(Path::new("."));
    let folder = match out_dir {
        Some(out) => {
            let rel = root.and_then(|r| parent.strip_prefix(r).ok()).unwrap_or(Path::new(""));
            out.join(rel)
        }
        None => parent.to_path_buf(),
    };
    OutputPaths {
        masks: folder.join(format!("{base}_masks.tif")),
        flows: folder.join(format!("{base}_flows.tif")),
    }
}

/// `[3, H, W]`: dY, dX, cellprob, the layout of `predict`'s and `segment --save-flows`' TIFF.
pub fn flow_pages(pred: &Prediction) -> Array3<f32> {
    let (_, h, w) = pred.dp.dim();
    let mut out = Array3::<f32>::zeros((3, h, w));
    out.slice_mut(ndarray::s![0..2, .., ..]).assign(&pred.dp);
    out.index_axis_mut(ndarray::Axis(0), 2).assign(&pred.cellprob);
    out
}

fn check_model(model: &AnyModel, settings: &SegmentSettings) -> Result<(), EvaluateError> {
    // cpsam takes any 1-3 channels (cellpose 4 has no channel selection)
    let AnyModel::Cpnet(model) = model else { return Ok(()) };
    check_cpnet(model, settings)
}

fn check_cpnet(model: &LoadedModel, settings: &SegmentSettings) -> Result<(), EvaluateError> {
    let net = &model.model.net;
    let origin = model.source.path.display().to_string();
    Ok(model.model.check_io(settings.predict.channels.nchan() as i64, net.config.nout, &origin)?)
}

/// Reads `image` and segments it; errors name the file.
pub fn segment_file(
    model: &AnyModel,
    image: &Path,
    settings: &SegmentSettings,
    device: Device,
) -> Result<Segmentation, EvaluateError> {
    check_model(model, settings)?;
    let raw = imageio::read_image(image)?;
    segment_any(model, &raw, settings, device).map_err(|e| e.in_file(image))
}

/// Writes the masks (and the flows when asked), creating the output folder.
pub fn write_outputs(seg: &Segmentation, paths: &OutputPaths, save_flows: bool) -> Result<(), ImageError> {
    if let Some(dir) = paths.masks.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ImageError { path: dir.to_path_buf(), kind: e.into() })?;
    }
    imageio::write_labels_tiff_described(
        &paths.masks,
        seg.masks.view(),
        Some(imageio::SEGMENT_MASKS_DESCRIPTION),
    )?;
    if save_flows {
        imageio::write_tiff_f32(&paths.flows, &flow_pages(&seg.prediction))?;
    }
    Ok(())
}

/// A folder of images with ground-truth masks, found as the `train` CLI finds them.
#[derive(Debug, Clone)]
pub struct Folder<'a> {
    pub dir: &'a Path,
    pub img_filter: &'a str,
    pub mask_filter: &'a str,
    pub look_one_level_down: bool,
}

/// One scored image of [`evaluate_folder`], as its caller sees it.
pub struct Scored<'a> {
    pub score: &'a ImageScore,
    /// The image (raw intensities) and its ground truth.
    pub example: &'a crate::train::RawExample,
    pub masks: &'a ndarray::Array2<u32>,
}

/// Segments every image of `folder` and scores it against its mask. `on_image` sees each image
/// as it is scored (progress, overlay pictures). Image names are paths relative to the folder.
pub fn evaluate_folder(
    model: &AnyModel,
    folder: &Folder,
    settings: &SegmentSettings,
    device: Device,
    on_image: &mut dyn FnMut(Scored<'_>),
) -> Result<ApSummary, EvaluateError> {
    check_model(model, settings)?;
    let pairs = crate::train::discover(
        folder.dir,
        folder.img_filter,
        folder.mask_filter,
        folder.look_one_level_down,
    )?;
    let mut scores = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let Some(raw) = crate::train::load_pairs(std::slice::from_ref(pair))?.into_iter().next() else {
            continue;
        };
        let seg = segment_any(model, &raw.image, settings, device).map_err(|e| e.in_file(&pair.image))?;
        let name = pair.image.strip_prefix(folder.dir).unwrap_or(&pair.image).display().to_string();
        let score = match model {
            AnyModel::Cpnet(_) => score_masks(&name, &raw.labels, &seg.masks),
            AnyModel::Cpsam(_) => super::score_masks_cp4(&name, &raw.labels, &seg.masks),
        }
        .map_err(|e| e.in_file(&pair.image))?;
        let raw = crate::train::RawExample { name: name.clone(), ..raw };
        on_image(Scored { score: &score, example: &raw, masks: &seg.masks });
        scores.push(score);
    }
    Ok(ApSummary::from_images(scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_go_next_to_the_image_or_under_out_keeping_subfolders() {
        let p = output_paths(Path::new("/data/a/img_1.tif"), Some(Path::new("/data")), None);
        assert_eq!(p.masks, PathBuf::from("/data/a/img_1_masks.tif"));
        assert_eq!(p.flows, PathBuf::from("/data/a/img_1_flows.tif"));
        let p =
            output_paths(Path::new("/data/a/img_1.png"), Some(Path::new("/data")), Some(Path::new("/out")));
        assert_eq!(p.masks, PathBuf::from("/out/a/img_1_masks.tif"));
        let p = output_paths(Path::new("x.tif"), None, Some(Path::new("/out")));
        assert_eq!(p.masks, PathBuf::from("/out/x_masks.tif"));
    }
}
