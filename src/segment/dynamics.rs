//! Following the flows: Euler integration of every cell pixel through the flow field, cellpose
//! 3.1.1.2 `dynamics.follow_flows` with `interp=True` (`steps_interp`).
//!
//! cellpose has two integrators and picks one by device; both are here:
//! - CPU: numba `map_coordinates` bilinear interpolation at pixel coordinates, positions clamped
//!   to `[0, L-1]` (here [`follow_flows_cpu`], rayon over points).
//! - CUDA: `torch.nn.functional.grid_sample(align_corners=False)` on coordinates normalised by
//!   `L-1` (here [`follow_flows_torch`]). The two normalisations disagree by up to half a pixel
//!   (grid_sample's -1 is pixel -0.5, not 0), so the two integrators end at slightly different
//!   places and the masks can differ a little, in cellpose as here.
//!
//! The field passed in is already what `compute_masks` integrates: network dP times the
//! cell-probability mask, divided by 5.

use ndarray::{ArrayView3, Axis};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Final positions (row, column) of pixels after `niter` steps, truncated to integers as
/// cellpose's `.int()` does. `starts` are (row, column) pixel coordinates.
pub fn follow_flows(
    dp: ArrayView3<f32>,
    starts: &[(usize, usize)],
    niter: u32,
    device: Device,
) -> Result<Vec<(i32, i32)>, tch::TchError> {
    if device.is_cuda() {
        follow_flows_torch(dp, starts, niter, device)
    } else {
        Ok(follow_flows_cpu(dp, starts, niter))
    }
}

/// The CPU integrator (cellpose `steps_interp` numba branch).
pub fn follow_flows_cpu(dp: ArrayView3<f32>, starts: &[(usize, usize)], niter: u32) -> Vec<(i32, i32)> {
    let field = Field::new(dp);
    starts
        .par_iter()
        .with_min_len(256)
        .map(|&(y, x)| {
            let (py, px) = field.integrate(y as f32, x as f32, niter);
            (py as i32, px as i32)
        })
        .collect()
}

/// A `[2, H, W]` flow field laid out flat, (dY, dX) side by side, so that each bilinear
/// corner is one cache access.
struct Field {
    v: Vec<[f32; 2]>,
    h: usize,
    w: usize,
}

impl Field {
    fn new(dp: ArrayView3<f32>) -> Field {
        let (_, h, w) = dp.dim();
        let v = dp
            .index_axis(Axis(0), 0)
            .iter()
            .zip(dp.index_axis(Axis(0), 1).iter())
            .map(|(&a, &b)| [a, b])
            .collect();
        Field { v, h, w }
    }

    /// numba `map_coordinates` + the clamped Euler step, in the precision numba compiles
    /// cellpose's expression to (read off its machine code, checked bit for bit): the fractions
    /// are float32; `1 - f` is float64 (an integer literal minus float32); so
    /// `I00 * (1-fy) * (1-fx)` and `I01 * (1-fy) * fx` are float64 products, `I10 * fy` is a
    /// float32 product before `* (1-fx)` in float64, and `I11 * fy * fx` is float32 throughout;
    /// the sum is float64, stored as float32. Positions are float32.
    fn integrate(&self, mut py: f32, mut px: f32, niter: u32) -> (f32, f32) {
        let (hmax, wmax) = (self.h as i64 - 1, self.w as i64 - 1);
        for _ in 0..niter {
            let (yfl, xfl) = (py as i32 as i64, px as i32 as i64);
            let fy = (py as f64 - yfl as f64) as f32;
            let fx = (px as f64 - xfl as f64) as f32;
            let (gy, gx) = (1.0 - fy as f64, 1.0 - fx as f64);
            let yf = yfl.clamp(0, hmax);
            let xf = xfl.clamp(0, wmax);
            let yf1 = (yf + 1).min(hmax);
            let xf1 = (xf + 1).min(wmax);
            let w = self.w as i64;
            let (c00, c01) = (self.v[(yf * w + xf) as usize], self.v[(yf * w + xf1) as usize]);
            let (c10, c11) = (self.v[(yf1 * w + xf) as usize], self.v[(yf1 * w + xf1) as usize]);
            let interp = |k: usize| -> f32 {
                let t1 = c00[k] as f64 * gy * gx;
                let t2 = c01[k] as f64 * gy * fx as f64;
                let t3 = (c10[k] * fy) as f64 * gx;
                let t4 = (c11[k] * fy * fx) as f64;
                (t1 + t2 + t3 + t4) as f32
            };
            let ny = (py + interp(0)).max(0.0).min(hmax as f32);
            let nx = (px + interp(1)).max(0.0).min(wmax as f32);
            // the step depends on the position alone: a point that did not move never will
            if ny == py && nx == px {
                break;
            }
            (py, px) = (ny, nx);
        }
        (py, px)
    }
}

/// The CUDA integrator (cellpose `steps_interp` torch branch), on any device.
pub fn follow_flows_torch(
    dp: ArrayView3<f32>,
    starts: &[(usize, usize)],
    niter: u32,
    device: Device,
) -> Result<Vec<(i32, i32)>, tch::TchError> {
    let (_, h, w) = dp.dim();
    if starts.is_empty() {
        return Ok(Vec::new());
    }
    let n = starts.len() as i64;
    // shape reversed and minus one, as cellpose: k = 0 is x (columns), k = 1 is y (rows)
    let scale = [w as f64 - 1.0, h as f64 - 1.0];
    let plane = |c: usize| -> Result<Tensor, tch::TchError> {
        let v: Vec<f32> = dp.index_axis(Axis(0), c).iter().copied().collect();
        Tensor::f_from_slice(&v)?.f_view([h as i64, w as i64])?.f_to_device(device)
    };
    // channel 0 of the image is the x flow, channel 1 the y flow
    let im_x = plane(1)?.f_mul_scalar(2.0 / scale[0])?;
    let im_y = plane(0)?.f_mul_scalar(2.0 / scale[1])?;
    let im = Tensor::f_stack(&[im_x, im_y], 0)?.f_unsqueeze(0)?;

    let coord = |f: fn(&(usize, usize)) -> usize, k: usize| -> Result<Tensor, tch::TchError> {
        let v: Vec<f32> = starts.iter().map(|s| f(s) as f32).collect();
        Tensor::f_from_slice(&v)?
            .f_view([1, 1, n])?
            .f_to_device(device)?
            .f_div_scalar(scale[k])?
            .f_mul_scalar(2.0)?
            .f_sub_scalar(1.0)
    };
    let mut px = coord(|s| s.1, 0)?;
    let mut py = coord(|s| s.0, 1)?;
    for _ in 0..niter {
        let grid = Tensor::f_stack(&[&px, &py], 3)?;
        let d = im.f_grid_sampler(&grid, 0, 0, false)?;
        px = px.f_add(&d.f_select(1, 0)?)?.f_clamp(-1.0, 1.0)?;
        py = py.f_add(&d.f_select(1, 1)?)?.f_clamp(-1.0, 1.0)?;
    }
    let back = |t: Tensor, k: usize| -> Result<Vec<i32>, tch::TchError> {
        let t = t.f_add_scalar(1.0)?.f_mul_scalar(0.5)?.f_mul_scalar(scale[k])?.f_to_kind(Kind::Int)?;
        Vec::<i32>::try_from(&t.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)
    };
    let xs = back(px, 0)?;
    let ys = back(py, 1)?;
    Ok(ys.into_iter().zip(xs).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn uniform_flow_moves_and_clamps() {
        // dY = 0.5, dX = -0.25 everywhere: after 4 steps (2, -1) pixels, clamped at the border
        let mut dp = Array3::<f32>::zeros((2, 10, 10));
        dp.index_axis_mut(Axis(0), 0).fill(0.5);
        dp.index_axis_mut(Axis(0), 1).fill(-0.25);
        let out = follow_flows_cpu(dp.view(), &[(3, 5), (9, 0)], 4);
        assert_eq!(out, vec![(5, 4), (9, 0)]);
    }

    #[test]
    fn interpolation_is_bilinear() {
        // dX grows linearly with the column: bilinear lookup between columns is exact
        let mut dp = Array3::<f32>::zeros((2, 4, 8));
        for x in 0..8 {
            dp.index_axis_mut(Axis(0), 1).column_mut(x).fill(0.1 * x as f32);
        }
        let field = Field::new(dp.view());
        let (_, px) = field.integrate(1.0, 2.0, 2);
        // step 1: 2.0 + 0.2 = 2.2; step 2: 2.2 + 0.22 = 2.42
        assert!((px - 2.42).abs() < 1e-5, "{px}");
    }

    #[test]
    fn torch_integrator_follows_a_uniform_flow() {
        let mut dp = Array3::<f32>::zeros((2, 9, 9));
        dp.index_axis_mut(Axis(0), 1).fill(1.0);
        let out = follow_flows_torch(dp.view(), &[(4, 1)], 3, Device::Cpu).expect("torch on cpu");
        // grid_sample samples half a pixel off, but a uniform interior flow still moves 1/step
        assert_eq!(out, vec![(4, 4)]);
    }
}
