//! Segmentation and scoring: image -> network -> masks (cellpose `eval`), and masks against ground
//! truth as average precision at IoU 0.5/0.75/0.9 (cellpose `metrics.average_precision`, after
//! relabelling both images consecutively, since cellpose counts objects by the largest label).
//! Files and folders (the `segment` and `eval` subcommands) are in [`files`]; the printed table
//! and JSON document in [`table`].

mod files;
mod qc;
mod table;

pub use files::{
    evaluate_folder, flow_pages, output_paths, segment_any, segment_file, write_outputs, Folder, OutputPaths,
    Scored, SegmentSettings,
};
pub use qc::QcScores;
pub use table::{summary_json, summary_table};

use std::collections::BTreeMap;
use std::path::PathBuf;

use ndarray::{Array2, Array3};
use tch::Device;

use crate::model::Model;
use crate::predict::{self, PredictOptions, Prediction};
use crate::segment::{self, MaskParams, MatchCounts};
use crate::train::Example;
use crate::transforms::{Channels, Normalize};

/// IoU thresholds reported everywhere.
pub const THRESHOLDS: [f64; 3] = [0.5, 0.75, 0.9];

/// Mask settings as cellpose `eval` flags (`niter: None` = 200 scaled by 1/rescale).
#[derive(Debug, Clone)]
pub struct MaskOptions {
    pub flow_threshold: f64,
    pub cellprob_threshold: f32,
    pub min_size: i64,
    pub niter: Option<u32>,
}

impl Default for MaskOptions {
    fn default() -> Self {
        MaskOptions { flow_threshold: 0.4, cellprob_threshold: 0.0, min_size: 15, niter: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(transparent)]
    Transform(#[from] crate::transforms::TransformError),
    #[error(transparent)]
    Segment(#[from] segment::SegmentError),
    #[error(transparent)]
    Metrics(#[from] segment::MetricsError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Image(#[from] crate::imageio::ImageError),
    #[error(transparent)]
    Data(#[from] crate::train::data::DataError),
    /// A step after reading failed; the file it was working on.
    #[error("failed to segment {}", path.display())]
    File { path: PathBuf, source: Box<EvaluateError> },
}

impl EvaluateError {
    /// Names the file this error happened on.
    pub(crate) fn in_file(self, path: &std::path::Path) -> EvaluateError {
        EvaluateError::File { path: path.to_path_buf(), source: Box::new(self) }
    }
}

/// Network output and masks for one image.
pub struct Segmentation {
    pub prediction: Prediction,
    pub masks: Array2<u32>,
}

/// cellpose `CellposeModel.eval` for one 2-D image `[C, H, W]`.
pub(crate) fn segment_image(
    model: &Model,
    diam_mean: f64,
    raw: &Array3<f32>,
    predict_opts: &PredictOptions,
    masks: &MaskOptions,
    device: Device,
) -> Result<Segmentation, EvaluateError> {
    let prediction = predict::predict(model, diam_mean, raw, predict_opts, device)?;
    let params = MaskParams {
        niter: segment::eval_niter(masks.niter, prediction.rescale, predict_opts.resample),
        cellprob_threshold: masks.cellprob_threshold,
        flow_threshold: masks.flow_threshold,
        min_size: masks.min_size,
        ..Default::default()
    };
    let m = segment::compute_masks(prediction.dp.view(), prediction.cellprob.view(), &params, device)?;
    Ok(Segmentation { prediction, masks: m })
}

/// cellpose 4.2.1.1 `CellposeModel.eval` for one 2-D image `[C, H, W]` and a cpsam model:
/// [`crate::predict_cpsam::predict_cp4`], then [`segment::compute_masks_cp4`] with cellpose 4's
/// step count.
pub(crate) fn segment_image_cp4(
    model: &crate::model::CpsamModel,
    raw: &Array3<f32>,
    opts: &crate::predict_cpsam::Cp4Options,
    masks: &MaskOptions,
    device: Device,
) -> Result<Segmentation, EvaluateError> {
    let prediction = crate::predict_cpsam::predict_cp4(model, raw, opts)?;
    let params = MaskParams {
        niter: crate::predict_cpsam::cp4_niter(masks.niter, prediction.rescale, opts.resample),
        cellprob_threshold: masks.cellprob_threshold,
        flow_threshold: masks.flow_threshold,
        min_size: masks.min_size,
        ..Default::default()
    };
    let m = segment::compute_masks_cp4(prediction.dp.view(), prediction.cellprob.view(), &params, device)?;
    Ok(Segmentation { prediction, masks: m })
}

/// Scores of one image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ImageScore {
    pub name: String,
    pub n_true: usize,
    pub n_pred: usize,
    /// cellpose's per-image AP = TP / (TP + FP + FN) at each threshold.
    pub ap: Vec<f64>,
    pub tp: Vec<u64>,
    pub fp: Vec<u64>,
    #[serde(rename = "fn")]
    pub fn_: Vec<u64>,
    /// Summed IoU of the TP pairs at each threshold (panoptic quality); empty in scores saved
    /// before it was kept.
    #[serde(default)]
    pub iou_sum: Vec<f64>,
}

/// Scores over a set of images.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ApSummary {
    pub thresholds: Vec<f64>,
    /// Mean over images of the per-image AP (images with nothing to match are left out).
    pub ap: Vec<f64>,
    /// Precision, recall and F1 from the TP/FP/FN summed over all images.
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    /// Panoptic quality from the counts and matched IoUs summed over all images.
    #[serde(default)]
    pub pq: Vec<f64>,
    /// Mean over images of each image's precision, recall, F1 and PQ.
    #[serde(default)]
    pub image_mean: QcScores,
    pub n_images: usize,
    pub n_true: usize,
    pub n_pred: usize,
    pub per_image: Vec<ImageScore>,
}

impl ApSummary {
    /// AP at IoU 0.5.
    pub fn ap50(&self) -> f64 {
        self.ap.first().copied().unwrap_or(f64::NAN)
    }

    /// `{"0.5": .., "0.75": .., "0.9": ..}`
    pub(crate) fn by_threshold(&self) -> BTreeMap<String, f64> {
        self.thresholds.iter().zip(&self.ap).map(|(t, a)| (format!("{t}"), *a)).collect()
    }

    /// Aggregates per-image scores.
    pub fn from_images(per_image: Vec<ImageScore>) -> ApSummary {
        let k = THRESHOLDS.len();
        let mut ap = vec![0.0; k];
        let mut n_scored = vec![0usize; k];
        let (mut tp, mut fp, mut fn_) = (vec![0u64; k], vec![0u64; k], vec![0u64; k]);
        let mut iou_sum = vec![0f64; k];
        for s in &per_image {
            for i in 0..k {
                if s.ap[i].is_finite() {
                    ap[i] += s.ap[i];
                    n_scored[i] += 1;
                }
                tp[i] += s.tp[i];
                fp[i] += s.fp[i];
                fn_[i] += s.fn_[i];
                iou_sum[i] += s.iou_sum.get(i).copied().unwrap_or(0.0);
            }
        }
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let totals: Vec<MatchCounts> = (0..k)
            .map(|i| MatchCounts {
                threshold: THRESHOLDS[i],
                tp: tp[i],
                fp: fp[i],
                fn_: fn_[i],
                iou_sum: iou_sum[i],
            })
            .collect();
        let per_image_qc: Vec<QcScores> = per_image.iter().map(ImageScore::qc).collect();
        ApSummary {
            thresholds: THRESHOLDS.to_vec(),
            ap: (0..k).map(|i| div(ap[i], n_scored[i] as f64)).collect(),
            precision: totals.iter().map(MatchCounts::precision).collect(),
            recall: totals.iter().map(MatchCounts::recall).collect(),
            f1: totals.iter().map(MatchCounts::f1).collect(),
            pq: totals.iter().map(MatchCounts::panoptic_quality).collect(),
            image_mean: QcScores::mean_of(&per_image_qc),
            n_images: per_image.len(),
            n_true: per_image.iter().map(|s| s.n_true).sum(),
            n_pred: per_image.iter().map(|s| s.n_pred).sum(),
            per_image,
        }
    }
}

/// Scores predicted masks against ground truth (both relabelled consecutively first).
pub fn score_masks(name: &str, truth: &Array2<u32>, pred: &Array2<u32>) -> Result<ImageScore, EvaluateError> {
    let t = segment::relabel_consecutive(truth.view());
    let p = segment::relabel_consecutive(pred.view());
    let counts = segment::average_precision(t.view(), p.view(), &THRESHOLDS)?;
    let n_true = t.iter().copied().max().unwrap_or(0) as usize;
    let n_pred = p.iter().copied().max().unwrap_or(0) as usize;
    Ok(ImageScore {
        name: name.to_string(),
        n_true,
        n_pred,
        ap: counts.iter().map(MatchCounts::average_precision).collect(),
        tp: counts.iter().map(|c| c.tp).collect(),
        fp: counts.iter().map(|c| c.fp).collect(),
        fn_: counts.iter().map(|c| c.fn_).collect(),
        iou_sum: counts.iter().map(|c| c.iou_sum).collect(),
    })
}

/// [`score_masks`] with cellpose 4.2.1.1's object counts: `len(np.unique(m)) - 1`, which is one
/// short for a label image without background (cellpose 3 counts by the largest label). A cpsam
/// model's `eval` scores with these.
pub fn score_masks_cp4(
    name: &str,
    truth: &Array2<u32>,
    pred: &Array2<u32>,
) -> Result<ImageScore, EvaluateError> {
    let mut s = score_masks(name, truth, pred)?;
    let short = |m: &Array2<u32>| usize::from(!m.is_empty() && m.iter().all(|&v| v != 0));
    let (dt, dp) = (short(truth), short(pred));
    s.n_true -= dt.min(s.n_true);
    s.n_pred -= dp.min(s.n_pred);
    for i in 0..s.ap.len() {
        s.fn_[i] = s.fn_[i].saturating_sub(dt as u64);
        s.fp[i] = s.fp[i].saturating_sub(dp as u64);
        let d = (s.tp[i] + s.fp[i] + s.fn_[i]) as f64;
        s.ap[i] = if d > 0.0 { s.tp[i] as f64 / d } else { f64::NAN };
    }
    Ok(s)
}

/// Segments prepared examples (already channel-converted and normalised) with `model` at each
/// example's annotated median diameter, and scores them against their labels; returns the
/// predicted masks of the first `keep` examples too (the overlay picture's). Used for
/// validation before and after training: both models see the same images at the same scale, so
/// the comparison is about segmentation, not size estimation.
pub(crate) fn score_examples(
    model: &Model,
    diam_mean: f64,
    examples: &[Example],
    device: Device,
    keep: usize,
) -> Result<(ApSummary, Vec<Array2<u32>>), EvaluateError> {
    let mut scores = Vec::with_capacity(examples.len());
    let mut kept = Vec::new();
    for (i, e) in examples.iter().enumerate() {
        let opts = PredictOptions {
            channels: Channels::All { nchan: e.image.dim().0 },
            normalize: Normalize { normalize: false, ..Default::default() },
            diameter: Some(e.diameter),
            ..Default::default()
        };
        let seg = segment_image(model, diam_mean, &e.image, &opts, &MaskOptions::default(), device)?;
        scores.push(score_masks(&e.name, &e.labels, &seg.masks)?);
        if i < keep {
            kept.push(seg.masks);
        }
    }
    Ok((ApSummary::from_images(scores), kept))
}
