//! Mask clean-up after clustering, as cellpose 3.1.1.2 does it: the flow-error check
//! (`dynamics.remove_bad_flow_masks`, `metrics.flow_error`), nearest-neighbour resizing
//! (`transforms.resize_image` with `cv2.INTER_NEAREST`) and `utils.fill_holes_and_remove_small_masks`.

use std::collections::VecDeque;

use ndarray::{s, Array2, ArrayView2, ArrayView3, Axis};
use tch::Device;

use super::labels::{bounding_boxes, max_label, remove_labels, renumber_in_place, sorted_counts};
use crate::train::flows::masks_to_flows;
use crate::train::flows_torch::{masks_to_flows_torch, masks_to_flows_torch_cp4};

/// Flow error per mask, cellpose `metrics.flow_error`: flows recomputed from the masks (with
/// cellpose's algorithm for `device`) against the network's `dp / 5`, squared difference
/// averaged over each mask's pixels and summed over dY and dX. Entry `i` is label `i + 1`;
/// labels without pixels get NaN (scipy `ndimage.mean` of nothing).
pub fn flow_error(
    masks: ArrayView2<u32>,
    dp: ArrayView3<f32>,
    device: Device,
) -> Result<Vec<f64>, tch::TchError> {
    flow_error_impl(masks, dp, device, false)
}

/// cellpose 4.2.1.1 `dynamics.remove_bad_flow_masks`: the flow error from cellpose 4's torch
/// `masks_to_flows_gpu` on every device (cellpose 4 has no CPU diffusion; its centres are
/// truncated centres of mass), then the removal and `fastremap.renumber`.
pub(crate) fn remove_bad_flow_masks_cp4(
    masks: &mut Array2<u32>,
    dp: ArrayView3<f32>,
    threshold: f64,
    device: Device,
) -> Result<(), tch::TchError> {
    let errors = flow_error_impl(masks.view(), dp, device, true)?;
    let bad: Vec<u32> =
        errors.iter().enumerate().filter(|(_, &e)| e > threshold).map(|(i, _)| i as u32 + 1).collect();
    remove_labels(masks, &bad);
    renumber_in_place(masks);
    Ok(())
}

fn flow_error_impl(
    masks: ArrayView2<u32>,
    dp: ArrayView3<f32>,
    device: Device,
    cp4: bool,
) -> Result<Vec<f64>, tch::TchError> {
    let n = max_label(masks) as usize;
    let mu = if n == 0 {
        ndarray::Array3::zeros((2, masks.nrows(), masks.ncols()))
    } else if cp4 {
        masks_to_flows_torch_cp4(masks, None, device)?
    } else if device.is_cuda() {
        masks_to_flows_torch(masks, None, device)?
    } else {
        masks_to_flows(masks, None)
    };
    let mut errors = vec![0f64; n];
    for c in 0..2 {
        // per-label sums in raster order, as np.bincount accumulates them
        let mut sums = vec![0f64; n + 1];
        let mut counts = vec![0u64; n + 1];
        let net = dp.index_axis(Axis(0), c);
        let own = mu.index_axis(Axis(0), c);
        for ((&l, &d), &m) in masks.iter().zip(net.iter()).zip(own.iter()) {
            let diff = m - (d / 5.0) as f64;
            sums[l as usize] += diff * diff;
            counts[l as usize] += 1;
        }
        for (i, e) in errors.iter_mut().enumerate() {
            *e += sums[i + 1] / counts[i + 1] as f64;
        }
    }
    Ok(errors)
}

/// Removes masks whose [`flow_error`] exceeds `threshold` (cellpose `remove_bad_flow_masks`).
/// Labels are not renumbered (the hole filling that follows does that).
pub fn remove_bad_flow_masks(
    masks: &mut Array2<u32>,
    dp: ArrayView3<f32>,
    threshold: f64,
    device: Device,
) -> Result<(), tch::TchError> {
    let errors = flow_error(masks.view(), dp, device)?;
    let bad: Vec<u32> =
        errors.iter().enumerate().filter(|(_, &e)| e > threshold).map(|(i, _)| i as u32 + 1).collect();
    remove_labels(masks, &bad);
    Ok(())
}

/// Nearest-neighbour resize to (rows, columns) with OpenCV `INTER_NEAREST` sampling: source
/// index `floor(dst * (1 / (dst_len / src_len)))`, clipped to the last pixel.
pub fn resize_nearest(masks: ArrayView2<u32>, size: (usize, usize)) -> Array2<u32> {
    let (h, w) = masks.dim();
    let (rh, rw) = size;
    if h == 0 || w == 0 {
        return Array2::zeros(size);
    }
    let src = |dst: usize, dst_len: usize, src_len: usize| -> Vec<usize> {
        let inv = 1.0 / (dst_len as f64 / src_len as f64);
        (0..dst).map(|i| ((i as f64 * inv).floor() as usize).min(src_len - 1)).collect()
    };
    let ys = src(rh, rh, h);
    let xs = src(rw, rw, w);
    Array2::from_shape_fn(size, |(y, x)| masks[[ys[y], xs[x]]])
}

/// Fills holes in each mask and removes masks smaller than `min_size` pixels, cellpose
/// `utils.fill_holes_and_remove_small_masks`, with its quirks kept so results match:
/// - the size filter takes the sorted unique values, drops the first (assumed background) and
///   removes label `k + 1` for the k-th small count, which is the right label only when labels
///   are consecutive (they are not after the flow check, so a wrong label can go; the second
///   pass, after hole filling and renumbering, then removes the truly small ones);
/// - a hole is background not 4-connected to the mask's bounding-box border (fill_voids); the
///   fill overwrites other masks lying inside the hole.
///
/// `min_size <= 0` skips the size filter and the renumbering.
pub fn fill_holes_and_remove_small_masks(masks: &mut Array2<u32>, min_size: i64) {
    if min_size > 0 {
        remove_small(masks, min_size);
    }
    // the j-th present label becomes j (cellpose's counter over non-empty find_objects slices)
    for (j, (label, bbox)) in bounding_boxes(masks.view()).into_iter().enumerate() {
        let next = j as u32 + 1;
        let mut region = masks.slice_mut(s![bbox.y0..bbox.y1, bbox.x0..bbox.x1]);
        let inside = region.mapv(|v| v == label);
        let filled = fill_voids(&inside);
        region.zip_mut_with(&filled, |v, &f| {
            if f {
                *v = next;
            }
        });
    }
    if min_size > 0 {
        remove_small(masks, min_size);
    }
}

/// One pass of the size filter (see [`fill_holes_and_remove_small_masks`]), then renumbering.
fn remove_small(masks: &mut Array2<u32>, min_size: i64) {
    let small: Vec<u32> = sorted_counts(masks.view())
        .into_iter()
        .skip(1)
        .enumerate()
        .filter(|(_, (_, c))| (*c as i64) < min_size)
        .map(|(k, _)| k as u32 + 1)
        .collect();
    remove_labels(masks, &small);
    renumber_in_place(masks);
}

/// The mask plus every background pixel that cannot reach the border through 4-connected
/// background (fill_voids `fill` in 2-D).
fn fill_voids(mask: &Array2<bool>) -> Array2<bool> {
    let (h, w) = mask.dim();
    let mut outside = Array2::<bool>::from_elem((h, w), false);
    let mut queue = VecDeque::new();
    for y in 0..h {
        for x in 0..w {
            if (y == 0 || x == 0 || y + 1 == h || x + 1 == w) && !mask[[y, x]] {
                outside[[y, x]] = true;
                queue.push_back((y, x));
            }
        }
    }
    while let Some((y, x)) = queue.pop_front() {
        let neighbours = [(y.wrapping_sub(1), x), (y + 1, x), (y, x.wrapping_sub(1)), (y, x + 1)];
        for (ny, nx) in neighbours {
            if ny < h && nx < w && !mask[[ny, nx]] && !outside[[ny, nx]] {
                outside[[ny, nx]] = true;
                queue.push_back((ny, nx));
            }
        }
    }
    outside.mapv(|o| !o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn holes_are_filled_but_diagonal_gaps_leak_nothing() {
        let ring =
            array![[1, 1, 1, 1, 0], [1, 0, 0, 0, 1], [1, 0, 2, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1],];
        let mut m = ring.mapv(|v: u32| v);
        fill_holes_and_remove_small_masks(&mut m, 0);
        // the diagonal gap at the top-right corner does not open the hole (4-connectivity),
        // and mask 2 inside the hole is overwritten
        let expected =
            array![[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1],];
        assert_eq!(m, expected);
    }

    #[test]
    fn small_masks_go_and_labels_are_renumbered() {
        let mut m = Array2::<u32>::zeros((6, 6));
        m.slice_mut(s![0..4, 0..4]).fill(5);
        m[[5, 5]] = 9;
        fill_holes_and_remove_small_masks(&mut m, 3);
        assert_eq!(m.iter().filter(|&&v| v == 1).count(), 16);
        assert_eq!(max_label(m.view()), 1);
    }

    #[test]
    fn nearest_resize_matches_opencv_sampling() {
        let a = array![[1u32, 2, 3], [4, 5, 6]];
        // 3 -> 5 columns: floor(x * 0.6) = 0, 0, 1, 1, 2; 2 -> 3 rows: floor(y * 2/3) = 0, 0, 1
        let r = resize_nearest(a.view(), (3, 5));
        assert_eq!(r, array![[1, 1, 2, 2, 3], [1, 1, 2, 2, 3], [4, 4, 5, 5, 6]]);
        let d = resize_nearest(a.view(), (1, 2));
        assert_eq!(d, array![[1, 2]]);
    }
}
