//! Labels -> flows with tensors, cellpose 3.1.1.2 `dynamics.masks_to_flows_gpu` (2-D): the
//! algorithm cellpose runs when its device is CUDA. See [`super::flows`] for how it differs from
//! the CPU algorithm. It runs on any `tch::Device`; the golden tests run it on the CPU.

use ndarray::{Array3, ArrayView2};
use tch::{Device, Kind, Tensor};

use super::flows::{center_pixel, normalize_flows};
use crate::segment::labels::bounding_boxes;

/// Neighbour offsets in cellpose's order: self, up, down, left, right, then the diagonals.
const OFFSETS: [(i64, i64); 9] =
    [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)];

/// Flows `[2, H, W]` (dY, dX; float64 unit vectors, 0 outside masks) with cellpose's torch
/// algorithm on `device`. `niter` = `None` uses cellpose's `2 * max(h + w + 2)` over masks.
pub fn masks_to_flows_torch(
    labels: ArrayView2<u32>,
    niter: Option<u32>,
    device: Device,
) -> Result<Array3<f64>, tch::TchError> {
    masks_to_flows_torch_impl(labels, niter, device, false)
}

/// cellpose 4.2.1.1 `masks_to_flows_gpu`: the same diffusion, but each mask's heat source is
/// [`cp4_center`], not cellpose 3's mask pixel nearest to the unrounded mean.
pub(crate) fn masks_to_flows_torch_cp4(
    labels: ArrayView2<u32>,
    niter: Option<u32>,
    device: Device,
) -> Result<Array3<f64>, tch::TchError> {
    masks_to_flows_torch_impl(labels, niter, device, true)
}

/// cellpose 4.2.1.1 `dynamics.center_of_mass` (which shadows scipy's): the mean position rounded
/// half to even (`np.round`); if that is not a mask pixel, the mask pixel nearest to it (first
/// in row-major order on ties). `coords` are the mask's pixels in row-major order.
pub(crate) fn cp4_center(coords: &[(i64, i64)]) -> (i64, i64) {
    let n = coords.len().max(1) as f64;
    let ry = (coords.iter().map(|c| c.0).sum::<i64>() as f64 / n).round_ties_even() as i64;
    let rx = (coords.iter().map(|c| c.1).sum::<i64>() as f64 / n).round_ties_even() as i64;
    if coords.contains(&(ry, rx)) {
        return (ry, rx);
    }
    let d = |c: &(i64, i64)| (c.1 - rx).pow(2) + (c.0 - ry).pow(2);
    coords.iter().copied().min_by_key(d).unwrap_or((ry, rx))
}

fn masks_to_flows_torch_impl(
    labels: ArrayView2<u32>,
    niter: Option<u32>,
    device: Device,
    center_of_mass: bool,
) -> Result<Array3<f64>, tch::TchError> {
    let (h0, w0) = labels.dim();
    let (h, w) = (h0 as i64 + 2, w0 as i64 + 2);
    let mut mu = Array3::<f64>::zeros((2, h0, w0));

    // mask pixels of the padded image in row-major order (torch.nonzero)
    let pixels: Vec<(i64, i64, u32)> = labels
        .indexed_iter()
        .filter(|(_, &v)| v != 0)
        .map(|((y, x), &v)| (y as i64 + 1, x as i64 + 1, v))
        .collect();
    let n = pixels.len();
    if n == 0 {
        return Ok(mu);
    }
    let label_at = |y: i64, x: i64| -> u32 {
        if y < 1 || x < 1 || y > h0 as i64 || x > w0 as i64 {
            0
        } else {
            labels[[(y - 1) as usize, (x - 1) as usize]]
        }
    };
    let mut neighbors = Vec::with_capacity(9 * n);
    let mut isneighbor = Vec::with_capacity(9 * n);
    for (k, &(dy, dx)) in OFFSETS.iter().enumerate() {
        for &(y, x, v) in &pixels {
            neighbors.push((y + dy) * w + x + dx);
            isneighbor.push(k == 0 || label_at(y + dy, x + dx) == v);
        }
    }

    // centres as cellpose's get_centers computes them: bbox-relative coordinates
    let boxes = bounding_boxes(labels);
    let mut meds = Vec::with_capacity(boxes.len());
    let mut ext_max = 0i64;
    for &(label, bbox) in &boxes {
        let coords: Vec<(i64, i64)> = labels
            .slice(ndarray::s![bbox.y0..bbox.y1, bbox.x0..bbox.x1])
            .indexed_iter()
            .filter(|(_, &v)| v == label)
            .map(|((y, x), _)| (y as i64, x as i64))
            .collect();
        let (cy, cx) = if center_of_mass { cp4_center(&coords) } else { coords[center_pixel(&coords)] };
        meds.push((bbox.y0 as i64 + cy + 1) * w + bbox.x0 as i64 + cx + 1);
        ext_max = ext_max.max((bbox.height() + bbox.width() + 2) as i64);
    }
    let n_iter = niter.map_or(2 * ext_max, i64::from);

    // float64 unless the padded image is huge, as cellpose (float32 above 4e7 pixels)
    let kind = if (h * w) as f64 > 4e7 { Kind::Float } else { Kind::Double };
    let meds = Tensor::f_from_slice(&meds)?.f_to_device(device)?;
    let neighbors = Tensor::f_from_slice(&neighbors)?.f_to_device(device)?;
    let centers = neighbors.f_narrow(0, 0, n as i64)?;
    let isneighbor = Tensor::f_from_slice(&isneighbor)?.f_view([9, n as i64])?.f_to_device(device)?;
    let mut t = Tensor::f_zeros([h * w], (kind, device))?;
    for _ in 0..n_iter {
        let heated = t.f_index_select(0, &meds)?.f_add_scalar(1.0)?;
        t = t.f_index_put_(&[Some(&meds)], &heated, false)?;
        let tneigh = t.f_index_select(0, &neighbors)?.f_view([9, n as i64])?.f_mul(&isneighbor)?;
        let mean = tneigh.f_mean_dim(Some(&[0i64][..]), false, None::<Kind>)?;
        t = t.f_index_put_(&[Some(&centers)], &mean, false)?;
    }
    // gradient from the plain neighbours (cellpose does not mask these by isneighbor)
    let at = |row: i64| -> Result<Tensor, tch::TchError> {
        t.f_index_select(0, &neighbors.f_narrow(0, row * n as i64, n as i64)?)
    };
    let dy = at(2)?.f_sub(&at(1)?)?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
    let dx = at(4)?.f_sub(&at(3)?)?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
    let dy = Vec::<f64>::try_from(&dy)?;
    let dx = Vec::<f64>::try_from(&dx)?;
    for (i, &(y, x, _)) in pixels.iter().enumerate() {
        mu[[0, (y - 1) as usize, (x - 1) as usize]] = dy[i];
        mu[[1, (y - 1) as usize, (x - 1) as usize]] = dx[i];
    }
    normalize_flows(&mut mu);
    Ok(mu)
}
