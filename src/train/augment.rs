//! Training-time augmentation: cellpose 3.1.1.2 `transforms.random_rotate_and_resize` for 2-D.
//!
//! Per image: a random horizontal flip, a rotation by a uniform angle, a scale of
//! `(1 - scale_range/2) + scale_range * U` divided by the image's `diameter / diam_mean`, and a
//! random offset; the affine warp crops a `bsize x bsize` patch (zeros outside the image).
//! Images and flows are interpolated bilinearly, cell probability by nearest neighbour (as
//! `cv2.warpAffine` with INTER_LINEAR / INTER_NEAREST), flipping negates dX, and the flow vectors
//! are rotated with the image.
//!
//! The warp computes each output pixel's source position and weights once and applies them to
//! every channel, writing straight into the batch buffer in the layout the network wants (NCHW or
//! NHWC), so a batch costs a few milliseconds on CPU threads.

use ndarray::Array3;
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

/// Memory layout of the augmented image in the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[C, bsize, bsize]`
    Chw,
    /// `[bsize, bsize, C]` (channels-last)
    Hwc,
}

/// Source views of one example: image `[C, Ly, Lx]`, flows `[3, Ly, Lx]` (cellprob, dY, dX).
pub struct Source<'a> {
    pub image: &'a Array3<f32>,
    pub flows: &'a Array3<f32>,
}

/// Warps one example into `img_out` (`C * bsize^2`, in `layout`) and `flow_out`
/// (`3 * bsize^2`, planes cellprob, dY, dX).
pub(crate) fn augment_into(
    src: &Source,
    p: &AugmentParams,
    bsize: usize,
    layout: Layout,
    img_out: &mut [f32],
    flow_out: &mut [f32],
) {
    let (c, ly, lx) = src.image.dim();
    let m = p.inverse(ly, lx, bsize);
    let img = src.image.as_slice().expect("standard layout image");
    let fl = src.flows.as_slice().expect("standard layout flows");
    let plane = ly * lx;
    let out_plane = bsize * bsize;
    let (sin, cos) = p.theta.sin_cos();
    let (sin, cos) = (sin as f32, cos as f32);
    let dx_sign = if p.flip { -1.0f32 } else { 1.0 };
    for y in 0..bsize {
        let yf = y as f64;
        let (mut sx, mut sy) = (m[1] * yf + m[2], m[4] * yf + m[5]);
        for x in 0..bsize {
            if x > 0 {
                sx += m[0];
                sy += m[3];
            }
            let o = y * bsize + x;
            // bilinear taps: up to four source pixels with weights; outside pixels weigh nothing
            let (x0f, y0f) = (sx.floor(), sy.floor());
            let (fx, fy) = ((sx - x0f) as f32, (sy - y0f) as f32);
            let (x0, y0) = (x0f as i64, y0f as i64);
            let mut taps = [(0usize, 0f32); 4];
            let mut n = 0;
            for (dy, wy) in [(0i64, 1.0 - fy), (1, fy)] {
                let yy = y0 + dy;
                if yy < 0 || yy >= ly as i64 || wy == 0.0 {
                    continue;
                }
                for (dx, wx) in [(0i64, 1.0 - fx), (1, fx)] {
                    let xx = x0 + dx;
                    if xx < 0 || xx >= lx as i64 || wx == 0.0 {
                        continue;
                    }
                    let xs = if p.flip { lx - 1 - xx as usize } else { xx as usize };
                    taps[n] = (yy as usize * lx + xs, wy * wx);
                    n += 1;
                }
            }
            let taps = &taps[..n];
            for ch in 0..c {
                let base = &img[ch * plane..(ch + 1) * plane];
                let v: f32 = taps.iter().map(|&(i, w)| w * base[i]).sum();
                match layout {
                    Layout::Chw => img_out[ch * out_plane + o] = v,
                    Layout::Hwc => img_out[o * c + ch] = v,
                }
            }
            // cell probability: nearest neighbour
            let (xn, yn) = (sx.round() as i64, sy.round() as i64);
            flow_out[o] = if xn >= 0 && yn >= 0 && (xn as usize) < lx && (yn as usize) < ly {
                let xs = if p.flip { lx - 1 - xn as usize } else { xn as usize };
                fl[yn as usize * lx + xs]
            } else {
                0.0
            };
            let dy: f32 = taps.iter().map(|&(i, w)| w * fl[plane + i]).sum();
            let dx: f32 = dx_sign * taps.iter().map(|&(i, w)| w * fl[2 * plane + i]).sum::<f32>();
            // rotate the vectors with the image (cellpose: v1 = dX, v2 = dY)
            flow_out[out_plane + o] = dx * sin + dy * cos;
            flow_out[2 * out_plane + o] = dx * cos - dy * sin;
        }
    }
}

/// One augmented training patch (owned arrays; tests and simple callers).
pub struct Patch {
    /// `[C, bsize, bsize]` image.
    pub image: Array3<f32>,
    /// `[3, bsize, bsize]`: cellprob, dY, dX.
    pub flows: Array3<f32>,
}

/// Applies `p` to an image `[C, Ly, Lx]` and its flows `[3, Ly, Lx]` (cellprob, dY, dX).
pub fn augment(image: &Array3<f32>, flows: &Array3<f32>, p: &AugmentParams, bsize: usize) -> Patch {
    let c = image.dim().0;
    let mut img = vec![0f32; c * bsize * bsize];
    let mut fl = vec![0f32; 3 * bsize * bsize];
    augment_into(&Source { image, flows }, p, bsize, Layout::Chw, &mut img, &mut fl);
    Patch {
        image: Array3::from_shape_vec((c, bsize, bsize), img).expect("sized above"),
        flows: Array3::from_shape_vec((3, bsize, bsize), fl).expect("sized above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    fn identity() -> AugmentParams {
        AugmentParams { flip: false, theta: 0.0, scale: 1.0, dxy: (0.0, 0.0) }
    }

    #[test]
    fn identity_warp_of_a_same_size_image_is_a_copy() {
        let img = Array3::from_shape_fn((2, 8, 8), |(c, y, x)| (c * 64 + y * 8 + x) as f32);
        let flows = Array3::from_shape_fn((3, 8, 8), |(k, y, x)| (k * 100 + y * 8 + x) as f32);
        let p = augment(&img, &flows, &identity(), 8);
        assert_eq!(p.image, img);
        assert_eq!(p.flows, flows);
    }

    #[test]
    fn channels_last_layout_holds_the_same_values() {
        let img = Array3::from_shape_fn((2, 8, 8), |(c, y, x)| (c * 64 + y * 8 + x) as f32);
        let flows = Array3::<f32>::zeros((3, 8, 8));
        let mut p = identity();
        p.theta = 0.3;
        let chw = augment(&img, &flows, &p, 8);
        let mut hwc = vec![0f32; 2 * 64];
        let mut fl = vec![0f32; 3 * 64];
        augment_into(&Source { image: &img, flows: &flows }, &p, 8, Layout::Hwc, &mut hwc, &mut fl);
        for ((c, y, x), v) in chw.image.indexed_iter() {
            assert_eq!(hwc[(y * 8 + x) * 2 + c], *v);
        }
    }

    #[test]
    fn flip_mirrors_and_negates_dx() {
        let img = Array3::from_shape_fn((1, 4, 4), |(_, _, x)| x as f32);
        let mut flows = Array3::<f32>::zeros((3, 4, 4));
        flows.index_axis_mut(Axis(0), 2).fill(0.5);
        let mut p = identity();
        p.flip = true;
        let out = augment(&img, &flows, &p, 4);
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
        let mut p = identity();
        p.theta = std::f64::consts::FRAC_PI_2;
        let out = augment(&img, &flows, &p, 9);
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
        let out = augment(&img, &flows, &p, 16);
        let area: f32 = out.image.iter().filter(|&&v| v > 0.5).count() as f32;
        assert!((12.0..=25.0).contains(&area), "area {area}");
    }
}
