//! Segmentation scores, cellpose 3.1.1.2 `metrics`: average precision AP = TP / (TP + FP + FN)
//! at IoU thresholds with an optimal one-to-one matching (`average_precision`,
//! `_true_positive`), matched IoUs (`mask_ious`) and the aggregated Jaccard index.
//!
//! cellpose matches with `linear_sum_assignment` on the cost `-(iou >= th) - iou / (2 n_min)`.
//! The second term sums to less than 1/2, so the optimum first maximises the number of pairs
//! with IoU >= th, then the IoU of the pairs; TP is that number. Pairs of objects that do not
//! overlap cost 0, so the problem splits into the connected components of the overlap graph,
//! each solved on its own small dense matrix: same optimum, without cellpose's
//! (max label)² matrix.
//!
//! Beside AP, [`MatchCounts`] gives the QC scores other tools report (BIOP's QuPath extension,
//! ZeroCostDL4Mic, InstanSeg): precision, recall, F1 and panoptic quality (Kirillov et al. 2019:
//! the summed IoU of the matched pairs over TP + FP/2 + FN/2), all from the same matching.
//!
//! cellpose counts objects by the largest label. [`average_precision`] counts distinct labels
//! (as if [`super::labels::relabel_consecutive`] ran first); [`average_precision_cellpose`]
//! reproduces cellpose exactly, gaps and all.

use std::collections::HashMap;

use ndarray::ArrayView2;

use super::assignment::linear_sum_assignment;
use super::labels::{label_counts, max_label};

/// The default thresholds of `metrics.average_precision`.
pub const DEFAULT_THRESHOLDS: [f64; 3] = [0.5, 0.75, 0.9];

/// Why two label images cannot be scored.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("ground truth is {truth:?} but the prediction is {pred:?}: score masks of the same image size")]
    ShapeMismatch { truth: (usize, usize), pred: (usize, usize) },
}

/// Matching counts at one IoU threshold; additive over images.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MatchCounts {
    pub threshold: f64,
    /// True objects matched by a predicted object with IoU >= threshold.
    pub tp: u64,
    /// Predicted objects left unmatched.
    pub fp: u64,
    /// True objects left unmatched.
    pub fn_: u64,
    /// Sum of the IoUs of the TP pairs (panoptic quality's numerator).
    pub iou_sum: f64,
}

impl MatchCounts {
    /// TP / (TP + FP + FN); NaN when there are no objects at all (as cellpose).
    pub fn average_precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp + self.fn_)
    }

    /// TP / (TP + FP); NaN without predictions.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// TP / (TP + FN); NaN without true objects.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// 2 TP / (2 TP + FP + FN); NaN when there are no objects at all.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// Panoptic quality = sum of matched IoUs / (TP + FP/2 + FN/2) = segmentation quality (mean
    /// matched IoU) x recognition quality (F1); NaN when there are no objects at all.
    pub(crate) fn panoptic_quality(&self) -> f64 {
        let d = self.tp as f64 + 0.5 * (self.fp + self.fn_) as f64;
        if d > 0.0 {
            self.iou_sum / d
        } else {
            f64::NAN
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// Sums per-image counts threshold by threshold (dataset totals). All inner vectors must use
/// the same thresholds in the same order; the first one's thresholds are reported.
pub fn sum_counts(per_image: &[Vec<MatchCounts>]) -> Vec<MatchCounts> {
    let Some(first) = per_image.first() else { return Vec::new() };
    let mut total: Vec<MatchCounts> = first
        .iter()
        .map(|c| MatchCounts { threshold: c.threshold, tp: 0, fp: 0, fn_: 0, iou_sum: 0.0 })
        .collect();
    for counts in per_image {
        for (t, c) in total.iter_mut().zip(counts) {
            t.tp += c.tp;
            t.fp += c.fp;
            t.fn_ += c.fn_;
            t.iou_sum += c.iou_sum;
        }
    }
    total
}

/// Matching counts at each threshold, objects counted as distinct labels (label values need
/// not be consecutive).
pub fn average_precision(
    masks_true: ArrayView2<u32>,
    masks_pred: ArrayView2<u32>,
    thresholds: &[f64],
) -> Result<Vec<MatchCounts>, MetricsError> {
    let ov = Overlaps::new(masks_true, masks_pred)?;
    let (n_true, n_pred) = (ov.true_labels.len() as u64, ov.pred_labels.len() as u64);
    let n_min = n_true.min(n_pred) as f64;
    Ok(thresholds
        .iter()
        .map(|&th| {
            let matched: Vec<f64> =
                ov.matches(th, n_min).iter().map(|m| m.iou).filter(|&iou| iou >= th).collect();
            let tp = matched.len() as u64;
            MatchCounts {
                threshold: th,
                tp,
                fp: n_pred - tp,
                fn_: n_true - tp,
                iou_sum: matched.iter().sum(),
            }
        })
        .collect())
}

/// cellpose `metrics.average_precision` for one image pair, to the bit: float32 results,
/// object counts taken as the largest label, AP NaN when both are empty.
#[derive(Debug, Clone, PartialEq)]
pub struct CellposeAp {
    pub ap: Vec<f32>,
    pub tp: Vec<f32>,
    pub fp: Vec<f32>,
    pub fn_: Vec<f32>,
}

/// One pair of the optimal matching: a true and a predicted label and their IoU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchedPair {
    pub true_label: u32,
    pub pred_label: u32,
    pub iou: f64,
}

/// The true positives of [`average_precision`] at `threshold`: the pairs of the same optimal
/// matching with IoU >= threshold (as many as its `tp`). Objects in no pair are its misses
/// (true) and false positives (predicted): what a QC picture shows.
pub fn matched_pairs(
    masks_true: ArrayView2<u32>,
    masks_pred: ArrayView2<u32>,
    threshold: f64,
) -> Result<Vec<MatchedPair>, MetricsError> {
    let ov = Overlaps::new(masks_true, masks_pred)?;
    let n_min = ov.true_labels.len().min(ov.pred_labels.len()) as f64;
    Ok(ov
        .matches(threshold, n_min)
        .into_iter()
        .filter(|m| m.iou >= threshold)
        .map(|m| MatchedPair {
            true_label: ov.true_labels[m.row],
            pred_label: ov.pred_labels[m.col],
            iou: m.iou,
        })
        .collect())
}

/// cellpose `metrics.average_precision(masks_true, masks_pred, threshold)` for one pair.
pub fn average_precision_cellpose(
    masks_true: ArrayView2<u32>,
    masks_pred: ArrayView2<u32>,
    thresholds: &[f64],
) -> Result<CellposeAp, MetricsError> {
    let ov = Overlaps::new(masks_true, masks_pred)?;
    let (n_true, n_pred) = (max_label(masks_true) as f32, max_label(masks_pred) as f32);
    let n_min = max_label(masks_true).min(max_label(masks_pred)) as f64;
    let mut out = CellposeAp { ap: vec![], tp: vec![], fp: vec![], fn_: vec![] };
    for &th in thresholds {
        let tp = if n_pred > 0.0 {
            ov.matches(th, n_min).iter().filter(|m| m.iou >= th).count() as f32
        } else {
            0.0
        };
        let (fp, fn_) = (n_pred - tp, n_true - tp);
        out.ap.push(tp / (tp + fp + fn_));
        out.tp.push(tp);
        out.fp.push(fp);
        out.fn_.push(fn_);
    }
    Ok(out)
}

/// cellpose `metrics.mask_ious`: for each true label 1..=max, the IoU of its matched prediction
/// (matching at IoU 0.5 as cellpose does) and that prediction's label. Unlike cellpose, a true
/// object paired with a prediction it does not overlap reports prediction 0 (cellpose reports an
/// arbitrary non-overlapping label with IoU 0).
pub fn mask_ious(
    masks_true: ArrayView2<u32>,
    masks_pred: ArrayView2<u32>,
) -> Result<(Vec<f64>, Vec<u32>), MetricsError> {
    let ov = Overlaps::new(masks_true, masks_pred)?;
    let n = max_label(masks_true) as usize;
    let n_min = max_label(masks_true).min(max_label(masks_pred)) as f64;
    let mut iout = vec![0f64; n];
    let mut preds = vec![0u32; n];
    for m in ov.matches(0.5, n_min) {
        if m.overlap > 0 {
            let t = ov.true_labels[m.row] as usize - 1;
            iout[t] = m.iou;
            preds[t] = ov.pred_labels[m.col];
        }
    }
    Ok((iout, preds))
}

/// cellpose `metrics.aggregated_jaccard_index` for one pair: pixels shared by each true object
/// and its [`mask_ious`] match, over the pixels of the union of all objects. NaN for two empty
/// images.
pub fn aggregated_jaccard_index(
    masks_true: ArrayView2<u32>,
    masks_pred: ArrayView2<u32>,
) -> Result<f64, MetricsError> {
    let ov = Overlaps::new(masks_true, masks_pred)?;
    let n_min = max_label(masks_true).min(max_label(masks_pred)) as f64;
    let shared: u64 = ov.matches(0.5, n_min).iter().map(|m| m.overlap).sum();
    let union = masks_true.iter().zip(masks_pred.iter()).filter(|(&t, &p)| t > 0 || p > 0).count() as u64;
    Ok(ratio(shared, union))
}

/// One pair of the optimal matching.
struct Match {
    row: usize,
    col: usize,
    iou: f64,
    overlap: u64,
}

/// Pixel overlaps between the objects of two label images, kept sparse.
struct Overlaps {
    /// Present labels, increasing; row/column indices refer to these.
    true_labels: Vec<u32>,
    pred_labels: Vec<u32>,
    /// (row, column, shared pixels, IoU) for each overlapping pair.
    pairs: Vec<(usize, usize, u64, f64)>,
    /// Connected components of the overlap graph: indices into `pairs`.
    components: Vec<Vec<usize>>,
}

impl Overlaps {
    fn new(t: ArrayView2<u32>, p: ArrayView2<u32>) -> Result<Overlaps, MetricsError> {
        if t.dim() != p.dim() {
            return Err(MetricsError::ShapeMismatch { truth: t.dim(), pred: p.dim() });
        }
        let tc = label_counts(t);
        let pc = label_counts(p);
        let mut shared: HashMap<(u32, u32), u64> = HashMap::new();
        for (&a, &b) in t.iter().zip(p.iter()) {
            if a > 0 && b > 0 {
                *shared.entry((a, b)).or_default() += 1;
            }
        }
        let row = |l: u32| tc.binary_search_by_key(&l, |&(x, _)| x).unwrap_or(0);
        let col = |l: u32| pc.binary_search_by_key(&l, |&(x, _)| x).unwrap_or(0);
        let mut pairs: Vec<(usize, usize, u64, f64)> = shared
            .into_iter()
            .map(|((a, b), o)| {
                let (r, c) = (row(a), col(b));
                // IoU as cellpose computes it: overlap / (area_true + area_pred - overlap)
                let iou = o as f64 / (tc[r].1 + pc[c].1 - o) as f64;
                (r, c, o, iou)
            })
            .collect();
        pairs.sort_unstable_by_key(|&(r, c, _, _)| (r, c));

        // union-find over rows (0..nt) and columns (nt..nt+np)
        let nt = tc.len();
        let mut parent: Vec<usize> = (0..nt + pc.len()).collect();
        fn find(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for &(r, c, _, _) in &pairs {
            let (a, b) = (find(&mut parent, r), find(&mut parent, nt + c));
            parent[a] = b;
        }
        let mut by_root: HashMap<usize, Vec<usize>> = HashMap::new();
        for (k, &(r, _, _, _)) in pairs.iter().enumerate() {
            let root = find(&mut parent, r);
            by_root.entry(root).or_default().push(k);
        }
        let mut components: Vec<Vec<usize>> = by_root.into_values().collect();
        components.sort_unstable();
        Ok(Overlaps {
            true_labels: tc.iter().map(|&(l, _)| l).collect(),
            pred_labels: pc.iter().map(|&(l, _)| l).collect(),
            pairs,
            components,
        })
    }

    /// The optimal matching for cellpose's cost at threshold `th` (pairs without overlap are
    /// left out: they add nothing to TP, IoU or shared pixels).
    fn matches(&self, th: f64, n_min: f64) -> Vec<Match> {
        let mut out = Vec::new();
        for comp in &self.components {
            let mut rows: Vec<usize> = comp.iter().map(|&k| self.pairs[k].0).collect();
            let mut cols: Vec<usize> = comp.iter().map(|&k| self.pairs[k].1).collect();
            rows.sort_unstable();
            rows.dedup();
            cols.sort_unstable();
            cols.dedup();
            let (nr, nc) = (rows.len(), cols.len());
            let mut cost = vec![0f64; nr * nc];
            let mut info: HashMap<(usize, usize), (u64, f64)> = HashMap::new();
            for &k in comp {
                let (r, c, o, iou) = self.pairs[k];
                let (i, j) = (rows.binary_search(&r).unwrap_or(0), cols.binary_search(&c).unwrap_or(0));
                cost[i * nc + j] = -(if iou >= th { 1.0 } else { 0.0 }) - iou / (2.0 * n_min);
                info.insert((i, j), (o, iou));
            }
            for (i, j) in linear_sum_assignment(&cost, nr, nc) {
                if let Some(&(overlap, iou)) = info.get(&(i, j)) {
                    out.push(Match { row: rows[i], col: cols[j], iou, overlap });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};

    fn rect(img: &mut Array2<u32>, label: u32, y: (usize, usize), x: (usize, usize)) {
        img.slice_mut(s![y.0..y.1, x.0..x.1]).fill(label);
    }

    #[test]
    fn optimal_matching_beats_greedy() {
        // true A | B side by side; pred x straddles both (IoU 1/3 each), pred y is a sliver of A
        let mut t = Array2::<u32>::zeros((10, 20));
        rect(&mut t, 1, (0, 10), (0, 10));
        rect(&mut t, 2, (0, 10), (10, 20));
        let mut p = Array2::<u32>::zeros((10, 20));
        rect(&mut p, 1, (0, 10), (5, 15));
        rect(&mut p, 2, (0, 10), (0, 3));
        let c = average_precision(t.view(), p.view(), &[0.25, 0.5]).expect("same shape");
        // at 0.25: y-A and x-B both count, greedy on the best IoU would find one
        assert_eq!((c[0].tp, c[0].fp, c[0].fn_), (2, 0, 0));
        assert_eq!((c[1].tp, c[1].fp, c[1].fn_), (0, 2, 2));
        assert_eq!(c[0].average_precision(), 1.0);
    }

    #[test]
    fn matched_pairs_are_the_true_positives_of_average_precision() {
        let mut t = Array2::<u32>::zeros((10, 20));
        rect(&mut t, 7, (0, 10), (0, 10));
        rect(&mut t, 9, (0, 10), (10, 20));
        let mut p = Array2::<u32>::zeros((10, 20));
        rect(&mut p, 3, (0, 10), (0, 9)); // IoU 0.9 with 7
        rect(&mut p, 4, (0, 2), (12, 20)); // IoU 0.16 with 9: a false positive, 9 a miss
        let pairs = matched_pairs(t.view(), p.view(), 0.5).expect("same shape");
        assert_eq!(pairs, vec![MatchedPair { true_label: 7, pred_label: 3, iou: 0.9 }]);
        let c = average_precision(t.view(), p.view(), &[0.5]).expect("same shape");
        assert_eq!((c[0].tp, c[0].fp, c[0].fn_), (1, 1, 1));
    }

    #[test]
    fn gaps_count_in_cellpose_mode_only() {
        let mut t = Array2::<u32>::zeros((4, 8));
        rect(&mut t, 5, (0, 4), (0, 4));
        let p = t.mapv(|v| if v > 0 { 1 } else { 0 });
        let ours = average_precision(t.view(), p.view(), &[0.5]).expect("same shape");
        assert_eq!(ours[0].average_precision(), 1.0);
        let cp = average_precision_cellpose(t.view(), p.view(), &[0.5]).expect("same shape");
        assert_eq!((cp.tp[0], cp.fn_[0], cp.ap[0]), (1.0, 4.0, 0.2));
    }

    #[test]
    fn derived_scores_and_totals() {
        let a = MatchCounts { threshold: 0.5, tp: 3, fp: 1, fn_: 2, iou_sum: 2.25 };
        let b = MatchCounts { threshold: 0.5, tp: 1, fp: 0, fn_: 0, iou_sum: 1.0 };
        let s = sum_counts(&[vec![a], vec![b]]);
        assert_eq!(s, vec![MatchCounts { threshold: 0.5, tp: 4, fp: 1, fn_: 2, iou_sum: 3.25 }]);
        // PQ = 2.25 / (3 + 1.5): mean matched IoU 0.75 x F1 2/3
        assert!((a.panoptic_quality() - 0.5).abs() < 1e-12);
        assert!((a.precision() - 0.75).abs() < 1e-12);
        assert!((a.recall() - 0.6).abs() < 1e-12);
        assert!((a.f1() - 6.0 / 9.0).abs() < 1e-12);
        let none = MatchCounts { threshold: 0.5, tp: 0, fp: 0, fn_: 0, iou_sum: 0.0 };
        assert!(none.average_precision().is_nan() && none.panoptic_quality().is_nan());
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let t = Array2::<u32>::zeros((4, 4));
        let p = Array2::<u32>::zeros((4, 5));
        assert!(matches!(
            average_precision(t.view(), p.view(), &[0.5]),
            Err(MetricsError::ShapeMismatch { .. })
        ));
    }
}
