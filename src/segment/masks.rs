//! Flows -> masks, cellpose 3.1.1.2 `dynamics.resize_and_compute_masks` / `compute_masks` as
//! `CellposeModel.eval` runs them for 2-D images: follow the flows from every pixel with
//! cellprob > threshold ([`super::dynamics`]), cluster the end points ([`get_masks`], cellpose
//! `get_masks_torch`), drop masks whose flows disagree with the network's
//! ([`super::cleanup::remove_bad_flow_masks`]), resize, fill holes and drop small masks.

use ndarray::{Array2, ArrayView2, ArrayView3, Axis, Zip};
use tch::{Device, Kind, Tensor};

use super::cleanup::{
    fill_holes_and_remove_small_masks, remove_bad_flow_masks, remove_bad_flow_masks_cp4, resize_nearest,
};
use super::dynamics::{follow_flows_cpu, follow_flows_torch};
use super::labels::{remove_labels, renumber_in_place, sorted_counts};

/// Histogram padding in `get_masks_torch` (`rpad`).
const RPAD: i64 = 20;

/// Parameters of `resize_and_compute_masks`, with cellpose's `eval` defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskParams {
    /// Euler steps; `eval` uses `200 / rescale` ([`eval_niter`]).
    pub niter: u32,
    /// Pixels with cellprob above this are followed (compared in float32, as numpy does).
    pub cellprob_threshold: f32,
    /// Masks whose flow error exceeds this are removed; 0 or less turns the check off.
    pub flow_threshold: f64,
    /// Masks smaller than this (after hole filling) are removed; 0 or less keeps all.
    pub min_size: i64,
    /// Masks covering more than this fraction of the image are removed.
    pub max_size_fraction: f64,
    /// Resize the masks (nearest neighbour) to (rows, columns) before the clean-up, for flows
    /// computed at another scale (cellpose `resize`).
    pub resize: Option<(usize, usize)>,
}

impl Default for MaskParams {
    fn default() -> Self {
        MaskParams {
            niter: 200,
            cellprob_threshold: 0.0,
            flow_threshold: 0.4,
            min_size: 15,
            max_size_fraction: 0.4,
            resize: None,
        }
    }
}

/// The Euler step count as `CellposeModel.eval` chooses it: a requested count other than 0 is
/// used as is; otherwise 200, or `1 / rescale * 200` truncated (`np.uint32`) when the flows were
/// resized back to the image (`resample=True`, the default). `rescale` is diam_mean / diameter.
pub fn eval_niter(requested: Option<u32>, rescale: f64, resample: bool) -> u32 {
    match requested {
        Some(n) if n > 0 => n,
        _ if resample => (1.0 / rescale * 200.0) as u32,
        _ => 200,
    }
}

/// Why masks could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("flows have shape {dp:?} but cellprob has shape {cellprob:?}: dP must be [2, H, W] with cellprob [H, W]")]
    ShapeMismatch { dp: (usize, usize, usize), cellprob: (usize, usize) },
    #[error("cannot resize masks to {0}x{1}: both sides must be at least 1")]
    EmptyResize(usize, usize),
    #[error("torch error while computing masks on {device:?}: {source}")]
    Torch { device: Device, source: tch::TchError },
}

/// Masks from network outputs, cellpose `resize_and_compute_masks`: `dp` is the network's
/// `[2, H, W]` (dY, dX at 5x unit scale), `cellprob` its `[H, W]` logits. Returns labels
/// 1..=n (0 = background) at `params.resize` or the input size. Everything runs with the
/// algorithms cellpose uses on `device`: on CUDA the grid_sample integrator, the seed sort and
/// the flow check's flows run there with torch; elsewhere the CPU algorithms.
pub fn compute_masks(
    dp: ArrayView3<f32>,
    cellprob: ArrayView2<f32>,
    params: &MaskParams,
    device: Device,
) -> Result<Array2<u32>, SegmentError> {
    compute_masks_with(dp, cellprob, params, Integrator::for_device(device), device)
}

/// Which integrator follows the flows; cellpose picks by device ([`Integrator::for_device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrator {
    /// numba `map_coordinates` at pixel coordinates, on the CPU (cellpose on CPU).
    Interpolate,
    /// torch `grid_sample` on the device (cellpose on CUDA).
    GridSample,
}

impl Integrator {
    /// cellpose's choice: grid_sample on CUDA, interpolation otherwise.
    pub(crate) fn for_device(device: Device) -> Integrator {
        if device.is_cuda() {
            Integrator::GridSample
        } else {
            Integrator::Interpolate
        }
    }
}

/// [`compute_masks`] with the integrator chosen by the caller, e.g. to reproduce on the CPU what
/// cellpose computes on a GPU.
pub fn compute_masks_with(
    dp: ArrayView3<f32>,
    cellprob: ArrayView2<f32>,
    params: &MaskParams,
    integrator: Integrator,
    device: Device,
) -> Result<Array2<u32>, SegmentError> {
    masks_impl(dp, cellprob, params, integrator, false, device)
}

/// Masks from a cpsam network's outputs, cellpose 4.2.1.1 `resize_and_compute_masks`. It differs
/// from cellpose 3.1.1.2's [`compute_masks`] in three places, all on the CPU: the flows are
/// followed with the torch `grid_sample` integrator on every device (cellpose 4 dropped the CPU
/// interpolation path); the flow-error check recomputes the masks' flows with the torch
/// diffusion (`masks_to_flows_gpu`) on every device; and the labels are renumbered right after
/// that check (`fastremap.renumber`), so the size filter removes the labels it means to
/// (cellpose 4's `fill_holes_and_remove_small_masks` looks the small labels up; on consecutive
/// labels that is what cellpose 3's index arithmetic does too).
pub fn compute_masks_cp4(
    dp: ArrayView3<f32>,
    cellprob: ArrayView2<f32>,
    params: &MaskParams,
    device: Device,
) -> Result<Array2<u32>, SegmentError> {
    masks_impl(dp, cellprob, params, Integrator::GridSample, true, device)
}

fn masks_impl(
    dp: ArrayView3<f32>,
    cellprob: ArrayView2<f32>,
    params: &MaskParams,
    integrator: Integrator,
    cellpose4: bool,
    device: Device,
) -> Result<Array2<u32>, SegmentError> {
    let (c, h, w) = dp.dim();
    if c != 2 || cellprob.dim() != (h, w) {
        return Err(SegmentError::ShapeMismatch { dp: dp.dim(), cellprob: cellprob.dim() });
    }
    if let Some((rh, rw)) = params.resize {
        if rh == 0 || rw == 0 {
            return Err(SegmentError::EmptyResize(rh, rw));
        }
    }
    let torch = |source| SegmentError::Torch { device, source };

    let inside = cellprob.mapv(|p| p > params.cellprob_threshold);
    let starts: Vec<(usize, usize)> = inside.indexed_iter().filter(|(_, &m)| m).map(|(i, _)| i).collect();
    let mut masks = if starts.is_empty() {
        Array2::zeros((h, w))
    } else {
        // dP * (cellprob > threshold) / 5, in float32 as numpy computes it
        let mut field = dp.to_owned();
        for mut plane in field.axis_iter_mut(Axis(0)) {
            Zip::from(&mut plane).and(&inside).for_each(|v, &m| *v = *v * if m { 1.0 } else { 0.0 } / 5.0);
        }
        let ends = match integrator {
            Integrator::Interpolate => follow_flows_cpu(field.view(), &starts, params.niter),
            Integrator::GridSample => {
                follow_flows_torch(field.view(), &starts, params.niter, device).map_err(torch)?
            }
        };
        let mut masks = get_masks(&ends, &starts, (h, w), params.max_size_fraction, device).map_err(torch)?;
        if params.flow_threshold > 0.0 && masks.iter().any(|&v| v > 0) {
            if cellpose4 {
                remove_bad_flow_masks_cp4(&mut masks, dp, params.flow_threshold, device).map_err(torch)?;
            } else {
                remove_bad_flow_masks(&mut masks, dp, params.flow_threshold, device).map_err(torch)?;
            }
        }
        masks
    };
    if let Some(size) = params.resize {
        masks = resize_nearest(masks.view(), size);
    }
    fill_holes_and_remove_small_masks(&mut masks, params.min_size);
    Ok(masks)
}

/// Clusters end points into masks, cellpose `get_masks_torch`: a histogram of the end points
/// (padded by 20), seeds at its local maxima (5x5) holding more than 10 points, each seed grown
/// 5 times into 3x3 neighbours holding more than 2 points (within 11x11), and every pixel gets
/// the label of the seed region its end point fell in. Masks larger than `max_size_fraction` of
/// the image are dropped and labels renumbered in order of first appearance.
///
/// `ends[i]` is where the pixel `starts[i]` ended. The seeds are ordered by count with torch's
/// (unstable) argsort on `device`, so that ties overlap exactly as in cellpose.
pub fn get_masks(
    ends: &[(i32, i32)],
    starts: &[(usize, usize)],
    shape: (usize, usize),
    max_size_fraction: f64,
    device: Device,
) -> Result<Array2<u32>, tch::TchError> {
    let (h0, w0) = shape;
    let (h, w) = (h0 + 2 * RPAD as usize, w0 + 2 * RPAD as usize);
    let padded: Vec<(usize, usize)> = ends
        .iter()
        .map(|&(y, x)| {
            let y = (y as i64 + RPAD).clamp(0, h0 as i64 + RPAD - 1) as usize;
            let x = (x as i64 + RPAD).clamp(0, w0 as i64 + RPAD - 1) as usize;
            (y, x)
        })
        .collect();
    let mut hist = Array2::<i32>::zeros((h, w));
    for &(y, x) in &padded {
        hist[[y, x]] += 1;
    }
    let hmax = max_filter(&max_filter(&hist, 5, Axis(0)), 5, Axis(1));
    let seeds: Vec<(usize, usize)> =
        Zip::indexed(&hist).and(&hmax).fold(Vec::new(), |mut acc, idx, &v, &m| {
            if v >= m && v > 10 {
                acc.push(idx);
            }
            acc
        });
    let mut masks = Array2::<u32>::zeros(shape);
    if seeds.is_empty() {
        return Ok(masks);
    }
    let counts: Vec<i32> = seeds.iter().map(|&s| hist[s]).collect();
    let order = torch_argsort(&counts, device)?;

    let mut m1 = Array2::<u32>::zeros((h, w));
    for (k, &si) in order.iter().enumerate() {
        let (sy, sx) = seeds[si];
        for (y, x) in grow_seed(&hist, sy, sx) {
            m1[[y, x]] = k as u32 + 1;
        }
    }
    for (&(y, x), &(py, px)) in starts.iter().zip(&padded) {
        masks[[y, x]] = m1[[py, px]];
    }

    let big = (h0 * w0) as f64 * max_size_fraction;
    let too_big: Vec<u32> = sorted_counts(masks.view())
        .into_iter()
        .filter(|&(l, c)| l != 0 && c as f64 > big)
        .map(|(l, _)| l)
        .collect();
    remove_labels(&mut masks, &too_big);
    renumber_in_place(&mut masks);
    Ok(masks)
}

/// Ascending argsort with torch's default (unstable) sort on int32, the order cellpose's
/// `npts.argsort()` gives: equal counts come out in torch's order, which decides which of two
/// overlapping seed regions keeps the shared pixels.
fn torch_argsort(values: &[i32], device: Device) -> Result<Vec<usize>, tch::TchError> {
    let t = Tensor::f_from_slice(values)?.f_to_device(device)?;
    let idx = t.f_argsort(0, false)?.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?;
    Ok(Vec::<i64>::try_from(&idx)?.into_iter().map(|i| i as usize).collect())
}

/// Running maximum of width `k` (odd) along one axis, windows clipped at the edges (cellpose
/// `max_pool1d`).
fn max_filter(a: &Array2<i32>, k: usize, axis: Axis) -> Array2<i32> {
    let r = (k / 2) as isize;
    let mut out = a.clone();
    for (src, mut dst) in a.lanes(axis).into_iter().zip(out.lanes_mut(axis)) {
        let n = src.len() as isize;
        for i in 0..n {
            let lo = (i - r).max(0) as usize;
            let hi = (i + r).min(n - 1) as usize;
            dst[i as usize] = (lo..=hi).map(|j| src[j]).max().unwrap_or(src[i as usize]);
        }
    }
    out
}

/// The pixels of one seed's region: 5 rounds of 3x3 dilation inside the 11x11 window around
/// the seed, each round keeping only pixels whose histogram count is above 2.
fn grow_seed(hist: &Array2<i32>, sy: usize, sx: usize) -> Vec<(usize, usize)> {
    const R: isize = 5;
    const S: usize = 11;
    let (h, w) = hist.dim();
    // window counts; outside the histogram counts as empty (cellpose's windows never reach it)
    let mut dense = [[false; S]; S];
    for (i, row) in dense.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            let y = sy as isize + i as isize - R;
            let x = sx as isize + j as isize - R;
            *cell = y >= 0
                && x >= 0
                && (y as usize) < h
                && (x as usize) < w
                && hist[[y as usize, x as usize]] > 2;
        }
    }
    let mut mask = [[false; S]; S];
    mask[R as usize][R as usize] = true;
    for _ in 0..5 {
        let mut next = [[false; S]; S];
        for i in 0..S {
            for j in 0..S {
                let hit = (i.saturating_sub(1)..=(i + 1).min(S - 1))
                    .any(|a| (j.saturating_sub(1)..=(j + 1).min(S - 1)).any(|b| mask[a][b]));
                next[i][j] = hit && dense[i][j];
            }
        }
        mask = next;
    }
    let mut out = Vec::new();
    for (i, row) in mask.iter().enumerate() {
        for (j, &m) in row.iter().enumerate() {
            if m {
                out.push(((sy as isize + i as isize - R) as usize, (sx as isize + j as isize - R) as usize));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn niter_follows_eval() {
        assert_eq!(eval_niter(None, 1.0, true), 200);
        assert_eq!(eval_niter(None, 30.0 / 17.0, true), 113);
        assert_eq!(eval_niter(Some(0), 0.5, true), 400);
        assert_eq!(eval_niter(None, 0.5, false), 200);
        assert_eq!(eval_niter(Some(77), 0.5, true), 77);
    }

    #[test]
    fn two_clusters_make_two_masks() {
        // 12 pixels end at (2, 2), 15 at (7, 8), 3 stragglers end alone
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for i in 0..30usize {
            starts.push((i / 10, i % 10));
            ends.push(match i {
                0..=11 => (2, 2),
                12..=26 => (7, 8),
                _ => (0, 9),
            });
        }
        let m = get_masks(&ends, &starts, (10, 10), 0.4, Device::Cpu).expect("cpu");
        assert_eq!(m[[0, 0]], 1);
        assert_eq!(m[[1, 1]], 1);
        assert_eq!(m[[1, 2]], 2);
        assert_eq!(m[[2, 6]], 2);
        assert_eq!(m[[2, 7]], 0, "a point in a sparse bin joins no seed");
        assert_eq!(m.iter().filter(|&&v| v == 1).count(), 12);
    }

    #[test]
    fn oversized_masks_are_dropped() {
        let starts: Vec<(usize, usize)> = (0..25).map(|i| (i / 5, i % 5)).collect();
        let ends = vec![(2, 2); 25];
        let m = get_masks(&ends, &starts, (5, 5), 0.4, Device::Cpu).expect("cpu");
        assert!(m.iter().all(|&v| v == 0));
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let dp = ndarray::Array3::<f32>::zeros((2, 4, 4));
        let cp = Array2::<f32>::zeros((4, 5));
        let err = compute_masks(dp.view(), cp.view(), &MaskParams::default(), Device::Cpu).unwrap_err();
        assert!(matches!(err, SegmentError::ShapeMismatch { .. }));
    }
}
