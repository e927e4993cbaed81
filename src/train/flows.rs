//! Labels -> flows, cellpose 3.1.1.2 `dynamics.labels_to_flows` / `masks_to_flows` (2-D).
//!
//! Each mask is heated at its centre (the mask pixel nearest the mean of its pixel coordinates)
//! and the heat diffuses over the mask's pixels; the gradient of the result, normalised to unit
//! length, is the flow (dY, dX). The training targets are `[labels, cellprob, dY, dX]`.
//!
//! cellpose has two algorithms and `labels_to_flows` picks one by device:
//! - CPU, `masks_to_flows_cpu` (+ numba `_extend_centers`), here [`masks_to_flows`]: each mask
//!   in its own bounding box (padded by 1), `2 * (h + w + 4)` iterations per mask; pixels of
//!   other masks count as 0, also in the final gradient.
//! - CUDA, `masks_to_flows_gpu` (torch), here [`super::flows_torch::masks_to_flows_torch`]: the
//!   whole image at once, `2 * max(h + w + 2)` iterations for every mask; neighbours of other
//!   masks are excluded from the diffusion but not from the final gradient, so at a boundary
//!   between touching masks the flow can point into the neighbour's heat.
//!
//! Both give unit vectors inside masks and 0 outside. On the golden fixtures their directions
//! differ by a median of 0.1-0.2 degrees and by up to ~6 degrees inside masks (more on
//! 1-pixel-wide objects), while on pixels touching another mask the torch algorithm can point
//! the opposite way (up to 180 degrees). [`labels_to_flows`] follows cellpose: torch algorithm
//! on CUDA, numba algorithm otherwise; pass `Device::Cpu` to get the CPU targets anywhere.

use ndarray::{s, Array2, Array3, ArrayView2, Axis};
use rayon::prelude::*;
use tch::Device;

use crate::segment::labels::{bounding_boxes, renumber_in_place, BBox};

/// Why flows could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("torch error while computing flows from labels on {device:?}: {source}")]
    Torch { device: Device, source: tch::TchError },
}

/// Training targets for one label image, as cellpose `labels_to_flows` returns them:
/// `[4, H, W]` float32 with channel 0 = labels renumbered 1.. in order of first appearance,
/// 1 = cell probability target (labels > 0 as 0/1), 2 = dY, 3 = dX (unit vectors, 0 outside masks).
///
/// `niter` = `None` lets cellpose choose the diffusion length (see the module docs). On
/// `Device::Cuda` the torch algorithm runs there; otherwise the CPU algorithm (rayon over masks).
pub fn labels_to_flows(
    labels: ArrayView2<u32>,
    niter: Option<u32>,
    device: Device,
) -> Result<Array3<f32>, FlowError> {
    if !device.is_cuda() {
        return Ok(labels_to_flows_cpu(labels, niter));
    }
    let mut relabelled = labels.to_owned();
    let n = renumber_in_place(&mut relabelled);
    let mu = if n == 0 {
        Array3::zeros((2, labels.nrows(), labels.ncols()))
    } else {
        super::flows_torch::masks_to_flows_torch(relabelled.view(), niter, device)
            .map_err(|source| FlowError::Torch { device, source })?
    };
    Ok(stack_targets(&relabelled, &mu))
}

/// [`labels_to_flows`] with the CPU algorithm (cellpose on CPU), which cannot fail.
pub(crate) fn labels_to_flows_cpu(labels: ArrayView2<u32>, niter: Option<u32>) -> Array3<f32> {
    let mut relabelled = labels.to_owned();
    let n = renumber_in_place(&mut relabelled);
    let mu = if n == 0 {
        Array3::zeros((2, labels.nrows(), labels.ncols()))
    } else {
        masks_to_flows(relabelled.view(), niter)
    };
    stack_targets(&relabelled, &mu)
}

/// `[labels, labels > 0, dY, dX]` as float32 (cellpose's `np.concatenate` in labels_to_flows).
fn stack_targets(relabelled: &Array2<u32>, mu: &Array3<f64>) -> Array3<f32> {
    let (h, w) = relabelled.dim();
    let mut out = Array3::<f32>::zeros((4, h, w));
    out.index_axis_mut(Axis(0), 0).assign(&relabelled.mapv(|v| v as f32));
    out.index_axis_mut(Axis(0), 1).assign(&relabelled.mapv(|v| if v > 0 { 1.0 } else { 0.0 }));
    out.slice_mut(s![2.., .., ..]).assign(&mu.mapv(|v| v as f32));
    out
}

/// [`labels_to_flows`] for many images: in parallel on the CPU, one after another on CUDA (the
/// device parallelises within an image).
pub fn labels_to_flows_batch(
    labels: &[Array2<u32>],
    niter: Option<u32>,
    device: Device,
) -> Result<Vec<Array3<f32>>, FlowError> {
    if device.is_cuda() {
        labels.iter().map(|l| labels_to_flows(l.view(), niter, device)).collect()
    } else {
        labels.par_iter().map(|l| labels_to_flows(l.view(), niter, device)).collect()
    }
}

/// Flows `[2, H, W]` (dY, dX; float64 unit vectors, 0 outside masks) from a label image with the
/// CPU algorithm, cellpose `masks_to_flows_cpu`. Labels need not be consecutive; each distinct
/// value is one mask, also when its pixels are not connected (then only the piece holding the
/// centre gets heat; pixels of the other pieces get zero flow, as in cellpose).
pub(crate) fn masks_to_flows(labels: ArrayView2<u32>, niter: Option<u32>) -> Array3<f64> {
    let (h, w) = labels.dim();
    let per_mask: Vec<Vec<(usize, f64, f64)>> = bounding_boxes(labels)
        .into_par_iter()
        .map(|(label, bbox)| mask_flow(labels, label, bbox, niter))
        .collect();
    let mut mu = Array3::<f64>::zeros((2, h, w));
    for (idx, dy, dx) in per_mask.into_iter().flatten() {
        let (y, x) = (idx / w, idx % w);
        mu[[0, y, x]] = dy;
        mu[[1, y, x]] = dx;
    }
    normalize_flows(&mut mu);
    mu
}

/// Divides each (dY, dX) by its length (+1e-60), as cellpose's "new normalization".
pub(crate) fn normalize_flows(mu: &mut Array3<f64>) {
    let (_, h, w) = mu.dim();
    for y in 0..h {
        for x in 0..w {
            let (dy, dx) = (mu[[0, y, x]], mu[[1, y, x]]);
            let norm = 1e-60 + (dy * dy + dx * dx).sqrt();
            mu[[0, y, x]] = dy / norm;
            mu[[1, y, x]] = dx / norm;
        }
    }
}

/// The pixel of a mask nearest the mean of its coordinates; the first such pixel in row-major
/// order on ties (numpy `argmin`). `coords` are in the caller's frame; cellpose computes this in
/// two frames (bbox-relative +1 on the CPU, bbox-relative on CUDA), and the frame changes the
/// rounding, hence the tie-breaking, so callers pass coordinates as cellpose does.
pub(crate) fn center_pixel(coords: &[(i64, i64)]) -> usize {
    let n = coords.len() as f64;
    let (sy, sx) = coords.iter().fold((0i64, 0i64), |(a, b), &(y, x)| (a + y, b + x));
    let (ymed, xmed) = (sy as f64 / n, sx as f64 / n);
    let mut best = 0;
    let mut best_d = f64::INFINITY;
    for (i, &(y, x)) in coords.iter().enumerate() {
        let (ddx, ddy) = (x as f64 - xmed, y as f64 - ymed);
        let d = ddx * ddx + ddy * ddy;
        if d < best_d {
            best_d = d;
            best = i;
        }
    }
    best
}

/// Heat diffusion for one mask in its padded bounding box (numba `_extend_centers`); returns
/// (flat image index, dY, dX) for each of its pixels, before normalisation.
fn mask_flow(labels: ArrayView2<u32>, label: u32, bbox: BBox, niter: Option<u32>) -> Vec<(usize, f64, f64)> {
    let w = labels.ncols();
    let (ly, lx) = (bbox.height() + 2, bbox.width() + 2);
    // pixel coordinates in the padded box (1-based), row-major as np.nonzero gives them
    let coords: Vec<(i64, i64)> = labels
        .slice(s![bbox.y0..bbox.y1, bbox.x0..bbox.x1])
        .indexed_iter()
        .filter(|(_, &v)| v == label)
        .map(|((y, x), _)| (y as i64 + 1, x as i64 + 1))
        .collect();
    let c = center_pixel(&coords);
    let center = coords[c].0 as usize * lx + coords[c].1 as usize;
    let idx: Vec<usize> = coords.iter().map(|&(y, x)| y as usize * lx + x as usize).collect();
    let n_iter = niter.map_or(2 * (ly + lx), |n| n as usize);

    // Jacobi update: all new values come from the previous T (numba evaluates the right-hand
    // side array before scattering it). Pixels outside the mask stay 0.
    let mut t = vec![0f64; ly * lx];
    let mut next = vec![0f64; idx.len()];
    for _ in 0..n_iter {
        t[center] += 1.0;
        for (k, &i) in idx.iter().enumerate() {
            // same summation order as cellpose: centre, up, down, left, right, then diagonals
            let sum = t[i]
                + t[i - lx]
                + t[i + lx]
                + t[i - 1]
                + t[i + 1]
                + t[i - lx - 1]
                + t[i - lx + 1]
                + t[i + lx - 1]
                + t[i + lx + 1];
            next[k] = 1.0 / 9.0 * sum;
        }
        for (k, &i) in idx.iter().enumerate() {
            t[i] = next[k];
        }
    }
    coords
        .iter()
        .zip(&idx)
        .map(|(&(y, x), &i)| {
            let dy = t[i + lx] - t[i - lx];
            let dx = t[i + 1] - t[i - 1];
            let gy = bbox.y0 + y as usize - 1;
            let gx = bbox.x0 + x as usize - 1;
            (gy * w + gx, dy, dx)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn flows_are_unit_inside_and_zero_outside() {
        let mut labels = Array2::<u32>::zeros((12, 14));
        labels.slice_mut(s![2..9, 3..12]).fill(4);
        let mu = masks_to_flows(labels.view(), None);
        for ((y, x), &l) in labels.indexed_iter() {
            let n = (mu[[0, y, x]].powi(2) + mu[[1, y, x]].powi(2)).sqrt();
            if l == 0 {
                assert_eq!(n, 0.0);
            } else if (y, x) != (5, 7) {
                assert!((n - 1.0).abs() < 1e-12, "norm {n} at {y},{x}");
            }
        }
        // flows point towards the centre
        assert!(mu[[1, 5, 3]] > 0.9 && mu[[1, 5, 11]] < -0.9);
        assert!(mu[[0, 2, 7]] > 0.9 && mu[[0, 8, 7]] < -0.9);
    }

    #[test]
    fn center_prefers_first_pixel_on_ties() {
        // a 2x2 square: all four pixels are equally near the mean
        assert_eq!(center_pixel(&[(1, 1), (1, 2), (2, 1), (2, 2)]), 0);
        // a row of three: the middle one
        assert_eq!(center_pixel(&[(4, 1), (4, 2), (4, 3)]), 1);
        // a C: the mean falls outside the mask, the nearest mask pixel wins
        assert_eq!(center_pixel(&[(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]), 2);
    }

    #[test]
    fn labels_to_flows_layout() {
        let labels = array![[0, 7, 7], [0, 7, 7], [3, 0, 0]];
        let f = labels_to_flows(labels.view(), None, Device::Cpu).expect("cpu flows");
        assert_eq!(f.dim(), (4, 3, 3));
        assert_eq!(f.index_axis(Axis(0), 0), array![[0., 1., 1.], [0., 1., 1.], [2., 0., 0.]]);
        assert_eq!(f.index_axis(Axis(0), 1), array![[0., 1., 1.], [0., 1., 1.], [1., 0., 0.]]);
        assert_eq!(f[[2, 0, 0]], 0.0);
        assert_eq!(f[[3, 2, 0]], 0.0, "a 1-pixel mask has no gradient");
    }
}
