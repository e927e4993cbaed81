//! Object diameters, cellpose 3.1.1.2 `utils.diameters`, and the floor `train_seg` applies.

use ndarray::ArrayView2;

use crate::segment::labels::sorted_counts;

/// cellpose `train_seg` replaces per-image median diameters below this by this
/// (`diam_train[diam_train < 5] = 5.`).
pub(crate) const MIN_TRAIN_DIAMETER: f64 = 5.0;

/// What `utils.diameters` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Diameters {
    /// Median over masks of sqrt(area), divided by sqrt(pi)/2: the diameter of a disc with the
    /// median area. 0 when there are no masks.
    pub median: f64,
    /// sqrt(area) of each mask in increasing label order (not scaled to a diameter, exactly as
    /// cellpose returns them); its length is the mask count `train_seg` compares with
    /// `min_train_masks`.
    pub per_mask: Vec<f64>,
}

/// Diameters as cellpose `utils.diameters`. Quirk kept on purpose: cellpose drops the first
/// entry of the sorted unique values assuming it is the background, so when no pixel is 0 the
/// smallest label is left out.
pub fn diameters(labels: ArrayView2<u32>) -> Diameters {
    let counts = sorted_counts(labels);
    let per_mask: Vec<f64> = counts.iter().skip(1).map(|&(_, c)| (c as f64).sqrt()).collect();
    // `np.pi**0.5` is pow(), which can differ from sqrt() in the last bit
    let median = median(&per_mask).unwrap_or(0.0) / (std::f64::consts::PI.powf(0.5) / 2.0);
    Diameters { median, per_mask }
}

/// The diameter `train_seg` uses for an image: the median, at least [`MIN_TRAIN_DIAMETER`].
pub(crate) fn train_diameter(median: f64) -> f64 {
    if median < MIN_TRAIN_DIAMETER {
        MIN_TRAIN_DIAMETER
    } else {
        median
    }
}

/// numpy `median`: the middle value, or the mean of the two middle values.
fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn matches_cellpose_docstring_example() {
        // utils.diameters docstring: masks [[0,1,1],[1,0,0],[1,1,0]] -> areas 5
        let d = diameters(array![[0u32, 1, 1], [1, 0, 0], [1, 1, 0]].view());
        assert_eq!(d.per_mask, vec![5f64.sqrt()]);
        assert!((d.median - 5f64.sqrt() / (std::f64::consts::PI.sqrt() / 2.0)).abs() < 1e-15);
    }

    #[test]
    fn even_count_median_averages() {
        let d = diameters(array![[0u32, 1, 2, 2, 2, 2]].view());
        assert_eq!(d.per_mask, vec![1.0, 2.0]);
        assert!((d.median - 1.5 / (std::f64::consts::PI.sqrt() / 2.0)).abs() < 1e-15);
    }

    #[test]
    fn empty_is_zero_and_floor_applies() {
        let d = diameters(array![[0u32, 0]].view());
        assert_eq!(d.median, 0.0);
        assert!(d.per_mask.is_empty());
        assert_eq!(train_diameter(d.median), 5.0);
        assert_eq!(train_diameter(12.5), 12.5);
    }
}
