//! Label-image bookkeeping shared by flows, masks and metrics: renumbering in order of first
//! appearance (fastremap `renumber`), consecutive relabelling in label order, per-label bounding
//! boxes (scipy `ndimage.find_objects`) and sizes (fastremap `unique(return_counts=True)`).
//!
//! Label images are `u32`; 0 is background.

use std::collections::HashMap;

use ndarray::{Array2, ArrayView2};

/// A label's bounding box, half-open: rows `y0..y1`, columns `x0..x1` (a find_objects slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BBox {
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
}

impl BBox {
    /// Rows spanned.
    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }

    /// Columns spanned.
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }
}

/// Maps label values through a table: dense when the largest label is small enough, a hash map
/// otherwise (label values are user data and can be as large as `u32::MAX`).
pub(crate) enum LabelMap {
    Dense(Vec<u32>),
    Sparse(HashMap<u32, u32>),
}

impl LabelMap {
    pub(crate) fn for_labels(max_label: u32, n_pixels: usize) -> LabelMap {
        if (max_label as usize) <= n_pixels.max(1 << 16) {
            LabelMap::Dense(vec![u32::MAX; max_label as usize + 1])
        } else {
            LabelMap::Sparse(HashMap::new())
        }
    }

    pub(crate) fn get(&self, label: u32) -> Option<u32> {
        match self {
            LabelMap::Dense(v) => v.get(label as usize).copied().filter(|&x| x != u32::MAX),
            LabelMap::Sparse(m) => m.get(&label).copied(),
        }
    }

    pub(crate) fn insert(&mut self, label: u32, value: u32) {
        match self {
            LabelMap::Dense(v) => {
                if let Some(slot) = v.get_mut(label as usize) {
                    *slot = value;
                }
            }
            LabelMap::Sparse(m) => {
                m.insert(label, value);
            }
        }
    }
}

/// Largest label (0 for an empty or all-background image).
pub(crate) fn max_label(labels: ArrayView2<u32>) -> u32 {
    labels.iter().copied().max().unwrap_or(0)
}

/// Renumbers labels 1, 2, … in order of first appearance in row-major order; 0 stays 0.
/// Returns the number of labels. This is fastremap `renumber(preserve_zero=True)`, which cellpose
/// uses in `labels_to_flows` and `get_masks_torch`; the order matters because later steps (the
/// flow-error check, hole filling) work label by label.
pub(crate) fn renumber_in_place(labels: &mut Array2<u32>) -> u32 {
    let mut map = LabelMap::for_labels(max_label(labels.view()), labels.len());
    let mut next = 0u32;
    for v in labels.iter_mut() {
        if *v == 0 {
            continue;
        }
        *v = match map.get(*v) {
            Some(new) => new,
            None => {
                next += 1;
                map.insert(*v, next);
                next
            }
        };
    }
    next
}

/// Relabels to 1..=n keeping the order of label values (the smallest label becomes 1); 0 stays
/// 0. Scoring uses this: cellpose's metrics count objects by the largest label, so gaps in the
/// label values would count as missing objects.
pub fn relabel_consecutive(labels: ArrayView2<u32>) -> Array2<u32> {
    let present = label_counts(labels);
    let mut map = LabelMap::for_labels(present.last().map_or(0, |&(l, _)| l), labels.len());
    for (i, &(label, _)) in present.iter().enumerate() {
        map.insert(label, i as u32 + 1);
    }
    labels.mapv(|v| if v == 0 { 0 } else { map.get(v).unwrap_or(0) })
}

/// The labels present (0 excluded) with their pixel counts, in increasing label order.
pub fn label_counts(labels: ArrayView2<u32>) -> Vec<(u32, u64)> {
    sorted_counts(labels).into_iter().filter(|&(l, _)| l != 0).collect()
}

/// Every value present, 0 included when present, with its pixel count, in increasing order
/// (fastremap `unique(return_counts=True)`).
pub(crate) fn sorted_counts(labels: ArrayView2<u32>) -> Vec<(u32, u64)> {
    let max = max_label(labels);
    if (max as usize) <= labels.len().max(1 << 16) {
        let mut counts = vec![0u64; max as usize + 1];
        for &v in labels.iter() {
            counts[v as usize] += 1;
        }
        counts.into_iter().enumerate().filter(|&(_, c)| c > 0).map(|(l, c)| (l as u32, c)).collect()
    } else {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for &v in labels.iter() {
            *counts.entry(v).or_default() += 1;
        }
        let mut v: Vec<(u32, u64)> = counts.into_iter().collect();
        v.sort_unstable();
        v
    }
}

/// Bounding boxes of the labels present (0 excluded), in increasing label order: the non-`None`
/// entries of scipy `find_objects`, each with its label.
pub(crate) fn bounding_boxes(labels: ArrayView2<u32>) -> Vec<(u32, BBox)> {
    let grow = |b: &mut BBox, y: usize, x: usize| {
        b.y0 = b.y0.min(y);
        b.y1 = b.y1.max(y + 1);
        b.x0 = b.x0.min(x);
        b.x1 = b.x1.max(x + 1);
    };
    let max = max_label(labels);
    if (max as usize) <= labels.len().max(1 << 16) {
        // dense table indexed by label: the common case, and much faster than hashing
        let mut boxes: Vec<Option<BBox>> = vec![None; max as usize + 1];
        for ((y, x), &v) in labels.indexed_iter() {
            if v != 0 {
                match &mut boxes[v as usize] {
                    Some(b) => grow(b, y, x),
                    slot => *slot = Some(BBox { y0: y, y1: y + 1, x0: x, x1: x + 1 }),
                }
            }
        }
        return boxes.into_iter().enumerate().filter_map(|(l, b)| b.map(|b| (l as u32, b))).collect();
    }
    let mut boxes: HashMap<u32, BBox> = HashMap::new();
    for ((y, x), &v) in labels.indexed_iter() {
        if v != 0 {
            boxes.entry(v).and_modify(|b| grow(b, y, x)).or_insert(BBox {
                y0: y,
                y1: y + 1,
                x0: x,
                x1: x + 1,
            });
        }
    }
    let mut v: Vec<(u32, BBox)> = boxes.into_iter().collect();
    v.sort_unstable_by_key(|&(l, _)| l);
    v
}

/// Sets every pixel whose label is in `remove` to 0 (fastremap `mask`).
pub(crate) fn remove_labels(labels: &mut Array2<u32>, remove: &[u32]) {
    if remove.is_empty() {
        return;
    }
    let max = remove.iter().copied().max().unwrap_or(0);
    let mut map = LabelMap::for_labels(max, labels.len());
    for &l in remove {
        map.insert(l, 0);
    }
    labels.mapv_inplace(|v| if map.get(v).is_some() { 0 } else { v });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn renumber_follows_first_appearance() {
        let mut a = array![[0, 5, 5, 2], [3, 0, 2, 7]];
        let n = renumber_in_place(&mut a);
        assert_eq!(n, 4);
        assert_eq!(a, array![[0, 1, 1, 2], [3, 0, 2, 4]]);
    }

    #[test]
    fn renumber_handles_huge_label_values() {
        let mut a = array![[u32::MAX, 0], [7, u32::MAX]];
        assert_eq!(renumber_in_place(&mut a), 2);
        assert_eq!(a, array![[1, 0], [2, 1]]);
    }

    #[test]
    fn relabel_consecutive_keeps_label_order() {
        let a = array![[0, 50, 50, 20], [30, 0, 20, 4_000_000_000]];
        assert_eq!(relabel_consecutive(a.view()), array![[0, 3, 3, 1], [2, 0, 1, 4]]);
    }

    #[test]
    fn boxes_and_counts_cover_each_label() {
        let a = array![[0, 2, 0], [2, 2, 0], [0, 0, 9]];
        assert_eq!(
            bounding_boxes(a.view()),
            vec![(2, BBox { y0: 0, y1: 2, x0: 0, x1: 2 }), (9, BBox { y0: 2, y1: 3, x0: 2, x1: 3 })]
        );
        assert_eq!(label_counts(a.view()), vec![(2, 3), (9, 1)]);
        assert_eq!(sorted_counts(a.view()), vec![(0, 5), (2, 3), (9, 1)]);
    }

    #[test]
    fn boxes_of_huge_labels_use_the_sparse_path() {
        let a = array![[0, u32::MAX], [7, u32::MAX]];
        assert_eq!(
            bounding_boxes(a.view()),
            vec![(7, BBox { y0: 1, y1: 2, x0: 0, x1: 1 }), (u32::MAX, BBox { y0: 0, y1: 2, x0: 1, x1: 2 })]
        );
    }

    #[test]
    fn remove_labels_zeroes_only_those() {
        let mut a = array![[1, 2], [3, 2]];
        remove_labels(&mut a, &[2, 99]);
        assert_eq!(a, array![[1, 0], [3, 0]]);
    }
}
