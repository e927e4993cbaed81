//! The QC scores labs compare segmentation tools by (BIOP's QuPath extension, ZeroCostDL4Mic,
//! InstanSeg): precision, recall, F1 and panoptic quality at each IoU threshold, per image and as
//! the mean over images, all from the matching that gives cellpose's AP.

use super::{ImageScore, THRESHOLDS};
use crate::segment::MatchCounts;

/// Precision, recall, F1 and panoptic quality, one value per IoU threshold (NaN where undefined:
/// no predictions for precision, no true objects for recall, no objects at all for F1 and PQ).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct QcScores {
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    /// Panoptic quality: summed matched IoU / (TP + FP/2 + FN/2).
    pub pq: Vec<f64>,
}

impl QcScores {
    /// The scores of matching counts, threshold by threshold.
    pub(crate) fn of_counts(counts: &[MatchCounts]) -> QcScores {
        QcScores {
            precision: counts.iter().map(MatchCounts::precision).collect(),
            recall: counts.iter().map(MatchCounts::recall).collect(),
            f1: counts.iter().map(MatchCounts::f1).collect(),
            pq: counts.iter().map(MatchCounts::panoptic_quality).collect(),
        }
    }

    /// Mean over images of each per-image score, leaving out the images where it is undefined
    /// (as the per-image AP mean does); NaN when no image defines it.
    pub fn mean_of(images: &[QcScores]) -> QcScores {
        let k = THRESHOLDS.len();
        let mean = |pick: fn(&QcScores) -> &Vec<f64>| -> Vec<f64> {
            (0..k)
                .map(|i| {
                    let vals: Vec<f64> = images
                        .iter()
                        .filter_map(|s| pick(s).get(i).copied())
                        .filter(|v| v.is_finite())
                        .collect();
                    if vals.is_empty() {
                        f64::NAN
                    } else {
                        vals.iter().sum::<f64>() / vals.len() as f64
                    }
                })
                .collect()
        };
        QcScores {
            precision: mean(|s| &s.precision),
            recall: mean(|s| &s.recall),
            f1: mean(|s| &s.f1),
            pq: mean(|s| &s.pq),
        }
    }
}

impl ImageScore {
    /// This image's matching counts at each threshold (summed IoU 0 for scores saved before it
    /// was kept).
    pub fn counts(&self) -> Vec<MatchCounts> {
        (0..self.tp.len().min(THRESHOLDS.len()))
            .map(|i| MatchCounts {
                threshold: THRESHOLDS[i],
                tp: self.tp[i],
                fp: self.fp.get(i).copied().unwrap_or(0),
                fn_: self.fn_.get(i).copied().unwrap_or(0),
                iou_sum: self.iou_sum.get(i).copied().unwrap_or(0.0),
            })
            .collect()
    }

    /// Precision, recall, F1 and PQ of this image.
    pub fn qc(&self) -> QcScores {
        QcScores::of_counts(&self.counts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_skips_undefined_images() {
        let a = QcScores {
            precision: vec![1.0; 3],
            recall: vec![0.5; 3],
            f1: vec![f64::NAN; 3],
            pq: vec![0.2; 3],
        };
        let b = QcScores {
            precision: vec![0.0; 3],
            recall: vec![f64::NAN; 3],
            f1: vec![f64::NAN; 3],
            pq: vec![0.4; 3],
        };
        let m = QcScores::mean_of(&[a, b]);
        assert_eq!(m.precision[0], 0.5);
        assert_eq!(m.recall[1], 0.5);
        assert!(m.f1[2].is_nan());
        assert!((m.pq[0] - 0.3).abs() < 1e-12);
    }
}
