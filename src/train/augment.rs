//! Training-time augmentation: cellpose 3.1.1.2 `transforms.random_rotate_and_resize` for 2-D.
//!
//! Per image: a random horizontal flip, a rotation by a uniform angle, a scale of
//! `(1 - scale_range/2) + scale_range * U` divided by the image's `diameter / diam_mean`, and a
//! random offset; the affine warp crops a `bsize x bsize` patch (zeros outside the image).
//! Images and flows are interpolated bilinearly, cell probability by nearest neighbour (as
//! `cv2.warpAffine` with INTER_LINEAR / INTER_NEAREST), flipping negates dX, and the flow vectors
//! are rotated with the image. Pure Rust on CPU threads, so batches are made while the network
//! trains on the previous one.

use ndarray::{Array3, ArrayView2, ArrayViewMut2, Axis};
use rand::Rng;

/// The random draws for one image, in cellpose's order (flip, theta, scale, dxy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentParams {
    pub flip: bool,
    pub theta: f64,
    pub scale: f64,
    pub dxy: (f64, f64),
}

impl AugmentParams {
    /// Draws parameters for an `ly x lx` image; `rescale` is the image's diameter / diam_mean
    /// (1 when not rescaling).
    pub fn draw<R: Rng>(
        rng: &mut R,
        ly: usize,
        lx: usize,
        bsize: usize,
        scale_range: f64,
        rescale: f64,
    ) -> Self {
        let scale_range = scale_range.clamp(0.0, 2.0);
        let flip = rng.gen::<f64>() > 0.5;
        let theta = rng.gen::<f64>() * std::f64::consts::PI * 2.0;
        let scale = ((1.0 - scale_range / 2.0) + scale_range * rng.gen::<f64>()) / rescale;
        let free_x = (lx as f64 * scale - bsize as f64).max(0.0);
        let free_y = (ly as f64 * scale - bsize as f64).max(0.0);
        let dxy = ((rng.gen::<f64>() - 0.5) * free_x, (rng.gen::<f64>() - 0.5) * free_y);
        AugmentParams { flip, theta, scale, dxy }
    }

    /// The inverse affine map: output pixel (x, y) -> source position, as `cv2.warpAffine` uses it.
    /// Forward: dst = s R(theta) (src - cc) + cc1.
    fn inverse(&self, ly: usize, lx: usize, bsize: usize) -> [f64; 6] {
        let (cx, cy) = (lx as f64 / 2.0, ly as f64 / 2.0);
        let cx1 = cx - (lx as f64 - bsize as f64) / 2.0 + self.dxy.0;
        let cy1 = cy - (ly as f64 - bsize as f64) / 2.0 + self.dxy.1;
        let (sin, cos) = self.theta.sin_cos();
        let inv_s = 1.0 / self.scale;
        // R^-1 = R(-theta): [[cos, sin], [-sin, cos]]
        let (a, b, c, d) = (cos * inv_s, sin * inv_s, -sin * inv_s, cos * inv_s);
        [a, b, cx - a * cx1 - b * cy1, c, d, cy - c * cx1 - d * cy1]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Interp {
    Linear,
    Nearest,
}

/// Warps one plane into `out` (zeros outside the source), optionally reading it mirrored in x.
fn warp(src: ArrayView2<f32>, mut out: ArrayViewMut2<f32>, m: &[f64; 6], flip: bool, interp: Interp) {
    let (ly, lx) = src.dim();
    let at = |y: i64, x: i64| -> f32 {
        if y < 0 || x < 0 || y >= ly as i64 || x >= lx as i64 {
            return 0.0;
        }
        let xs = if flip { lx - 1 - x as usize } else { x as usize };
        src[[y as usize, xs]]
    };
    for ((y, x), v) in out.indexed_iter_mut() {
        let (xf, yf) = (x as f64, y as f64);
        let sx = m[0] * xf + m[1] * yf + m[2];
        let sy = m[3] * xf + m[4] * yf + m[5];
        *v = match interp {
            Interp::Nearest => at(sy.round() as i64, sx.round() as i64),
            Interp::Linear => {
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
                let (x0, y0) = (x0 as i64, y0 as i64);
                (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
                    + fy * ((1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1))
            }
        };
    }
}

/// One augmented training patch.
pub struct Patch {
    /// `[C, bsize, bsize]` image.
    pub image: Array3<f32>,
    /// `[3, bsize, bsize]`: cellprob, dY, dX.
    pub flows: Array3<f32>,
    /// `[bsize, bsize]` class map (nearest), for class models.
    pub classes: Option<ndarray::Array2<f32>>,
}

/// Applies `p` to an image `[C, Ly, Lx]` and its flows `[3, Ly, Lx]` (cellprob, dY, dX).
pub fn augment(
    image: &Array3<f32>,
    flows: &Array3<f32>,
    classes: Option<&ndarray::Array2<f32>>,
    p: &AugmentParams,
    bsize: usize,
) -> Patch {
    let (c, ly, lx) = image.dim();
    let m = p.inverse(ly, lx, bsize);
    let mut out_img = Array3::<f32>::zeros((c, bsize, bsize));
    for (src, dst) in image.axis_iter(Axis(0)).zip(out_img.axis_iter_mut(Axis(0))) {
        warp(src, dst, &m, p.flip, Interp::Linear);
    }
    let mut out_fl = Array3::<f32>::zeros((3, bsize, bsize));
    for (k, (src, dst)) in flows.axis_iter(Axis(0)).zip(out_fl.axis_iter_mut(Axis(0))).enumerate() {
        warp(src, dst, &m, p.flip, if k == 0 { Interp::Nearest } else { Interp::Linear });
    }
    if p.flip {
        out_fl.index_axis_mut(Axis(0), 2).mapv_inplace(|v| -v);
    }
    // rotate the vectors with the image (cellpose: v1 = dX, v2 = dY)
    let (sin, cos) = p.theta.sin_cos();
    let (sin, cos) = (sin as f32, cos as f32);
    let (mut dy, mut dx) = {
        let mut it = out_fl.axis_iter_mut(Axis(0)).skip(1);
        match (it.next(), it.next()) {
            (Some(a), Some(b)) => (a, b),
            _ => unreachable!("flows have three planes"),
        }
    };
    ndarray::Zip::from(&mut dy).and(&mut dx).for_each(|y, x| {
        let (v1, v2) = (*x, *y);
        *y = v1 * sin + v2 * cos;
        *x = v1 * cos - v2 * sin;
    });
    let classes = classes.map(|cl| {
        let mut out = ndarray::Array2::<f32>::zeros((bsize, bsize));
        warp(cl.view(), out.view_mut(), &m, p.flip, Interp::Nearest);
        out
    });
    Patch { image: out_img, flows: out_fl, classes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(ly: usize, lx: usize, bsize: usize) -> AugmentParams {
        let _ = (ly, lx, bsize);
        AugmentParams { flip: false, theta: 0.0, scale: 1.0, dxy: (0.0, 0.0) }
    }

    #[test]
    fn identity_warp_of_a_same_size_image_is_a_copy() {
        let img = Array3::from_shape_fn((1, 8, 8), |(_, y, x)| (y * 8 + x) as f32);
        let flows = Array3::from_shape_fn((3, 8, 8), |(k, y, x)| (k * 100 + y * 8 + x) as f32);
        let p = augment(&img, &flows, None, &identity(8, 8, 8), 8);
        assert_eq!(p.image, img);
        assert_eq!(p.flows, flows);
    }

    #[test]
    fn flip_mirrors_and_negates_dx() {
        let img = Array3::from_shape_fn((1, 4, 4), |(_, _, x)| x as f32);
        let mut flows = Array3::<f32>::zeros((3, 4, 4));
        flows.index_axis_mut(Axis(0), 2).fill(0.5);
        let mut p = identity(4, 4, 4);
        p.flip = true;
        let out = augment(&img, &flows, None, &p, 4);
        assert_eq!(out.image[[0, 0, 0]], 3.0);
        assert_eq!(out.image[[0, 0, 3]], 0.0);
        assert!(out.flows.index_axis(Axis(0), 2).iter().all(|&v| v == -0.5));
    }

    #[test]
    fn quarter_turn_rotates_flow_vectors() {
        // a field pointing +x everywhere, rotated by 90 degrees, points +y
        let img = Array3::<f32>::zeros((1, 9, 9));
        let mut flows = Array3::<f32>::zeros((3, 9, 9));
        flows.index_axis_mut(Axis(0), 2).fill(1.0);
        let mut p = identity(9, 9, 9);
        p.theta = std::f64::consts::FRAC_PI_2;
        let out = augment(&img, &flows, None, &p, 9);
        assert!((out.flows[[1, 4, 4]] - 1.0).abs() < 1e-6);
        assert!(out.flows[[2, 4, 4]].abs() < 1e-6);
    }

    #[test]
    fn downscale_by_two_halves_the_object() {
        // rescale = 2 (objects twice diam_mean) with scale_range 0 shrinks the image by 2
        let mut rng = rand::rngs::mock::StepRng::new(0, 0);
        let p = AugmentParams::draw(&mut rng, 16, 16, 16, 0.0, 2.0);
        assert_eq!(p.scale, 0.5);
        let img = Array3::from_shape_fn((1, 16, 16), |(_, y, x)| {
            if (4..12).contains(&y) && (4..12).contains(&x) {
                1.0
            } else {
                0.0
            }
        });
        let flows = Array3::<f32>::zeros((3, 16, 16));
        let out = augment(&img, &flows, None, &p, 16);
        let area: f32 = out.image.iter().filter(|&&v| v > 0.5).count() as f32;
        assert!((12.0..=25.0).contains(&area), "area {area}");
    }
}
