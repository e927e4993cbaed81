//! Training data: finding image/mask pairs in folders (cellpose `io.get_image_files` /
//! `get_label_files`), and preparing them as `train_seg` does (`_process_train_test`): channel
//! conversion, percentile normalisation, labels -> flows, per-image median diameters (below 5 -> 5),
//! and the `min_train_masks` filter, which reports what it removed.

use std::path::{Path, PathBuf};

use ndarray::{s, Array2, Array3, Axis};
use rayon::prelude::*;

use crate::imageio::{self, ImageError};
use crate::transforms::{self, Channels, Normalize, TransformError};

/// Suffixes cellpose never treats as training images.
const NOT_IMAGES: [&str; 7] =
    ["_cp_output", "_flows", "_flows_0", "_flows_1", "_flows_2", "_cellprob", "_masks"];
const IMAGE_EXTS: [&str; 4] = ["tif", "tiff", "png", "PNG"];

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}: folder not found or not readable: {1}")]
    Folder(PathBuf, std::io::Error),
    #[error("{dir}: no images found (looked for *{img_filter}.tif/.tiff/.png without the mask suffix `{mask_filter}`)")]
    NoImages { dir: PathBuf, img_filter: String, mask_filter: String },
    #[error("{image}: no mask found; expected {expected} (masks are named <image base>{mask_filter}.tif/.tiff/.png)")]
    MissingMask { image: PathBuf, expected: PathBuf, mask_filter: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(
        "{image} and {mask} have different sizes ({ih}x{iw} vs {mh}x{mw}); each mask must match its image"
    )]
    SizeMismatch { image: PathBuf, mask: PathBuf, ih: usize, iw: usize, mh: usize, mw: usize },
    #[error("{image}: {source}")]
    Channels { image: PathBuf, source: TransformError },
    #[error(
        "no training images left: all {total} had fewer than min_train_masks ({min}) masks ({detail}); \
         lower --min-train-masks or add annotations"
    )]
    NothingLeft { total: usize, min: usize, detail: String },
    #[error("{image}: {count} pixels are NaN or infinite; fix or remove the image (training on them gives a NaN loss)")]
    NonFinite { image: PathBuf, count: usize },
    #[error("{image} is only {h}x{w} pixels; training images need at least {MIN_SIDE}x{MIN_SIDE}")]
    TooSmall { image: PathBuf, h: usize, w: usize },
}

/// Smallest training image side: one cell needs a few pixels, and the network halves the image
/// four times.
pub(crate) const MIN_SIDE: usize = 16;

/// An image file and its label file.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub image: PathBuf,
    pub mask: PathBuf,
}

/// Finds images the way cellpose's CLI does (`io.get_image_files`): files named
/// `*<img_filter>.<tif|tiff|png>` that do not end in a mask, flow or output suffix (nor
/// `mask_filter`), sorted by path so runs are reproducible.
pub fn find_images(
    dir: &Path,
    img_filter: &str,
    mask_filter: &str,
    look_one_level_down: bool,
) -> Result<Vec<PathBuf>, DataError> {
    let mut folders = vec![dir.to_path_buf()];
    if look_one_level_down {
        let rd = std::fs::read_dir(dir).map_err(|e| DataError::Folder(dir.into(), e))?;
        let mut subs: Vec<PathBuf> =
            rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        subs.sort();
        folders.extend(subs);
    }
    let mut images = Vec::new();
    for folder in &folders {
        let rd = std::fs::read_dir(folder).map_err(|e| DataError::Folder(folder.clone(), e))?;
        for entry in rd.filter_map(|e| e.ok()) {
            let path = entry.path();
            let (Some(stem), Some(ext)) =
                (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|s| s.to_str()))
            else {
                continue;
            };
            if !IMAGE_EXTS.iter().any(|e| e.eq_ignore_ascii_case(ext)) || !stem.ends_with(img_filter) {
                continue;
            }
            if NOT_IMAGES
                .iter()
                .chain(std::iter::once(&mask_filter))
                .any(|suf| !suf.is_empty() && stem.ends_with(suf))
            {
                continue;
            }
            images.push(path);
        }
    }
    images.sort();
    if images.is_empty() {
        return Err(DataError::NoImages {
            dir: dir.into(),
            img_filter: img_filter.into(),
            mask_filter: mask_filter.into(),
        });
    }
    Ok(images)
}

/// Finds training pairs the way cellpose's CLI does: images as [`find_images`], masks at
/// `<base without img_filter><mask_filter>.<tif|tiff|png>`.
pub fn discover(
    dir: &Path,
    img_filter: &str,
    mask_filter: &str,
    look_one_level_down: bool,
) -> Result<Vec<Pair>, DataError> {
    let images = find_images(dir, img_filter, mask_filter, look_one_level_down)?;
    images
        .into_iter()
        .map(|image| {
            let stem = image.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            let base = &stem[..stem.len() - img_filter.len()];
            let parent = image.parent().unwrap_or(Path::new("."));
            let candidates: Vec<PathBuf> = ["tif", "tiff", "png"]
                .iter()
                .map(|e| parent.join(format!("{base}{mask_filter}.{e}")))
                .collect();
            match candidates.iter().find(|c| c.is_file()) {
                Some(mask) => Ok(Pair { image: image.clone(), mask: mask.clone() }),
                None => Err(DataError::MissingMask {
                    image: image.clone(),
                    expected: candidates[0].clone(),
                    mask_filter: mask_filter.into(),
                }),
            }
        })
        .collect()
}

/// A raw training example before preparation.
pub struct RawExample {
    /// Shown in logs and errors (file path or annotation region).
    pub name: String,
    /// `[C, H, W]` raw intensities.
    pub image: Array3<f32>,
    /// `[H, W]` labels, 0 = background.
    pub labels: Array2<u32>,
}

/// Reads the pairs from disk, checking that each mask matches its image.
pub fn load_pairs(pairs: &[Pair]) -> Result<Vec<RawExample>, DataError> {
    pairs
        .par_iter()
        .map(|p| {
            let image = imageio::read_image(&p.image)?;
            let labels = imageio::read_labels(&p.mask)?;
            let (_, ih, iw) = image.dim();
            let (mh, mw) = labels.dim();
            let count = image.iter().filter(|v| !v.is_finite()).count();
            if count > 0 {
                return Err(DataError::NonFinite { image: p.image.clone(), count });
            }
            if ih.min(iw) < MIN_SIDE {
                return Err(DataError::TooSmall { image: p.image.clone(), h: ih, w: iw });
            }
            if (ih, iw) != (mh, mw) {
                return Err(DataError::SizeMismatch {
                    image: p.image.clone(),
                    mask: p.mask.clone(),
                    ih,
                    iw,
                    mh,
                    mw,
                });
            }
            Ok(RawExample { name: p.image.display().to_string(), image, labels })
        })
        .collect()
}

/// How raw examples become network inputs and targets.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub channels: Channels,
    pub normalize: Normalize,
    /// Images with fewer masks are dropped (cellpose `min_train_masks`, default 5).
    pub min_train_masks: usize,
}

/// A prepared training example.
pub struct Example {
    pub name: String,
    /// `[nchan, H, W]` normalised image.
    pub image: Array3<f32>,
    /// `[3, H, W]`: cellprob (0/1), dY, dX (unit vectors inside masks).
    pub flows: Array3<f32>,
    /// Median mask diameter, floored at 5 (cellpose `diam_train`).
    pub diameter: f64,
    pub nmasks: usize,
    /// The label image (ground truth for validation scoring).
    pub labels: Array2<u32>,
}

/// The prepared set and what the `min_train_masks` filter removed.
pub struct Prepared {
    pub examples: Vec<Example>,
    /// (name, number of masks) of each image dropped for having too few masks.
    pub removed: Vec<(String, usize)>,
}

/// Prepares examples in parallel (flows are the expensive part).
pub fn prepare(raw: Vec<RawExample>, opts: &PrepareOptions) -> Result<Prepared, DataError> {
    let all: Vec<Example> = raw
        .into_par_iter()
        .map(|r| {
            let mut image = transforms::convert_channels(r.image.view(), opts.channels)
                .map_err(|source| DataError::Channels { image: PathBuf::from(&r.name), source })?;
            transforms::normalize_img(&mut image, &opts.normalize);
            // cellpose labels_to_flows on the CPU: [labels, cellprob, dY, dX]; diameters come from
            // the renumbered labels (channel 0), as train_seg reads them
            let targets = super::flows::labels_to_flows_cpu(r.labels.view(), None);
            let relabelled = targets.index_axis(Axis(0), 0).mapv(|v| v as u32);
            let d = super::diameters::diameters(relabelled.view());
            let flows = targets.slice(s![1.., .., ..]).to_owned();
            let diameter = super::diameters::train_diameter(d.median);
            Ok(Example { name: r.name, image, flows, diameter, nmasks: d.per_mask.len(), labels: r.labels })
        })
        .collect::<Result<_, DataError>>()?;
    keep_trainable(all, opts.min_train_masks)
}

/// cellpose's `min_train_masks` filter, for either family: the examples with at least `min`
/// masks, and the others named; none left of a non-empty set is an error that names them.
pub(crate) fn keep_trainable(all: Vec<Example>, min: usize) -> Result<Prepared, DataError> {
    let total = all.len();
    let (examples, dropped): (Vec<_>, Vec<_>) = all.into_iter().partition(|e| e.nmasks >= min);
    let removed: Vec<(String, usize)> = dropped.into_iter().map(|e| (e.name, e.nmasks)).collect();
    if examples.is_empty() && total > 0 {
        let mut detail: Vec<String> = removed.iter().take(5).map(|(n, k)| format!("{n}: {k}")).collect();
        if removed.len() > 5 {
            detail.push(format!("... {} more", removed.len() - 5));
        }
        return Err(DataError::NothingLeft { total, min, detail: detail.join(", ") });
    }
    Ok(Prepared { examples, removed })
}
