//! cellpose 4.2.1.1 `transforms.random_rotate_and_resize`: the augmentation of every training
//! and test batch, done with torch ops (torchvision's affine grid + `grid_sample`) rather than
//! cellpose 3's OpenCV warps ([`crate::train::augment`]).
//!
//! Per image, in this order of random draws: a scale `(1 - r/2) + r * u` (r = `scale_range`, 0.5
//! in `train_seg`) divided by the image's rescale factor (1 with `rescale=False`, the default); an
//! angle uniform in [-180, 180) degrees (cellpose 3 only flipped); a horizontal flip with
//! probability 1/2; and a translation within the part of the scaled image that overhangs the
//! tile. torchvision's `translate` is (x, y), and cellpose passes it (y-range, x-range): the
//! x shift is drawn from the y overhang and vice versa; kept, as it is what cellpose 4 trains on.
//!
//! The image and all three targets (cellprob, dY, dX) are sampled bilinearly
//! (`_apply_grid_transform(..., "bilinear", fill=0)`: the result is multiplied by the warped
//! all-ones mask, which softens the tile's outer edge), and the flow vectors are then rotated by
//! the angle. The loss later thresholds the interpolated cellprob at 0.5.

use rand::Rng;
use tch::{Device, Kind, Tensor};

/// One image's augmentation, from five uniform draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cp4Augment {
    /// Zoom factor (after dividing by the rescale factor).
    pub scale: f32,
    /// Rotation in degrees (float32, as cellpose draws it).
    pub angle: f32,
    pub flip: bool,
    /// torchvision `translate` = (tx, ty) in pixels of the output tile.
    pub translate: (f32, f32),
}

impl Cp4Augment {
    /// The parameters cellpose derives from its draws `u` = (scale, angle, flip, t0, t1) for an
    /// `h x w` image, a `bsize` tile, `scale_range` and the image's `rescale` factor.
    pub fn from_uniforms(
        u: [f64; 5],
        h: usize,
        w: usize,
        bsize: usize,
        scale_range: f64,
        rescale: f64,
    ) -> Self {
        let r = scale_range.clamp(0.0, 2.0);
        // NumPy 2 keeps float32 once rescale (a float32 array entry) enters the product
        let scale = (((1.0 - r / 2.0) + r * u[0]) as f32) * (1.0 / rescale as f32);
        let angle = (360.0 * u[1] - 180.0) as f32;
        let over = |len: usize| (len as f32 * scale - bsize as f32).max(0.0);
        let (dy, dx) = (over(h), over(w));
        let flip = u[2] > 0.5;
        let t0 = dy * (u[3] as f32) - dy * 0.5;
        let t1 = dx * (u[4] as f32) - dx * 0.5;
        Cp4Augment { scale, angle, flip, translate: (t0, t1) }
    }

    /// Draws the parameters with `rng`, in cellpose's order.
    pub fn draw<R: Rng>(
        rng: &mut R,
        h: usize,
        w: usize,
        bsize: usize,
        scale_range: f64,
        rescale: f64,
    ) -> Self {
        let u = [rng.gen::<f64>(), rng.gen::<f64>(), rng.gen::<f64>(), rng.gen::<f64>(), rng.gen::<f64>()];
        Cp4Augment::from_uniforms(u, h, w, bsize, scale_range, rescale)
    }

    /// torchvision `_get_inverse_affine_matrix(center=0, angle, translate, scale, shear=0)`.
    fn inverse_matrix(&self) -> [f64; 6] {
        let rot = (self.angle as f64).to_radians();
        let s = self.scale as f64;
        let (c, sn) = (rot.cos() / s, rot.sin() / s);
        let (tx, ty) = (self.translate.0 as f64, self.translate.1 as f64);
        [c, sn, c * -tx + sn * -ty, -sn, c, -sn * -tx + c * -ty]
    }

    /// The sampling grid `[1, bsize, bsize, 2]` for an `h x w` source (torchvision
    /// `_gen_affine_grid`: pixel-centre coordinates, normalised by the source's half size).
    fn grid(&self, h: usize, w: usize, bsize: usize, device: Device) -> Tensor {
        let m = self.inverse_matrix();
        let n = bsize as i64;
        let half = 0.5 * bsize as f64;
        let opts = (Kind::Float, device);
        let xs = Tensor::linspace(-half + 0.5, half - 0.5, n, opts).view([1, n]).expand([n, n], false);
        let ys = Tensor::linspace(-half + 0.5, half - 0.5, n, opts).view([n, 1]).expand([n, n], false);
        let gx = (&xs * m[0] + &ys * m[1] + m[2]) / (0.5 * w as f64);
        let gy = (&xs * m[3] + &ys * m[4] + m[5]) / (0.5 * h as f64);
        Tensor::stack(&[gx, gy], -1).unsqueeze(0)
    }

    /// Warps `x` `[1, C, h, w]` onto the tile: bilinear `grid_sample` times the warped ones mask.
    fn warp(grid: &Tensor, x: &Tensor) -> Tensor {
        let size = x.size();
        let ones = Tensor::ones([1, 1, size[2], size[3]], (Kind::Float, x.device()));
        let y = Tensor::cat(&[x.shallow_clone(), ones], 1).grid_sampler_2d(grid, 0, 0, false);
        let c = size[1];
        y.narrow(1, 0, c) * y.narrow(1, c, 1)
    }

    /// Augments one image `[C, h, w]` and its targets `[3, h, w]` (cellprob, dY, dX) into
    /// `[C, bsize, bsize]` and `[3, bsize, bsize]`.
    pub fn apply(&self, image: &Tensor, targets: &Tensor, bsize: usize) -> (Tensor, Tensor) {
        let size = image.size();
        let (h, w) = (size[1] as usize, size[2] as usize);
        let grid = self.grid(h, w, bsize, image.device());
        let mut img = image.to_kind(Kind::Float).unsqueeze(0);
        let mut lbl = targets.to_kind(Kind::Float).unsqueeze(0);
        if self.flip {
            img = img.flip([3]);
            lbl = lbl.flip([3]);
            // a mirrored image has mirrored X flows
            let dx = lbl.narrow(1, 2, 1).neg();
            lbl = Tensor::cat(&[lbl.narrow(1, 0, 2), dx], 1);
        }
        let img = Self::warp(&grid, &img).squeeze_dim(0);
        let lbl = Self::warp(&grid, &lbl).squeeze_dim(0);
        // rotate the flow vectors with the image (cellpose: theta = angle * pi / 180)
        let theta = self.angle as f64 * std::f64::consts::PI / 180.0;
        let (sin, cos) = ((-theta).sin(), (-theta).cos());
        let dy = lbl.select(0, 1);
        let dx = lbl.select(0, 2);
        let new_dy = &dx * -sin + &dy * cos;
        let new_dx = &dx * cos + &dy * sin;
        let lbl = Tensor::stack(&[lbl.select(0, 0), new_dy, new_dx], 0);
        (img, lbl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_parameters_centre_a_small_image_in_the_tile() {
        // scale 1, angle 0 (u = 0.5), no flip, no overhang: a 16x16 image lands in the middle
        let a = Cp4Augment::from_uniforms([0.5, 0.5, 0.0, 0.5, 0.5], 16, 16, 32, 0.0, 1.0);
        assert_eq!((a.scale, a.angle, a.flip, a.translate), (1.0, 0.0, false, (0.0, 0.0)));
        let img = Tensor::ones([1, 16, 16], (Kind::Float, Device::Cpu));
        let lbl = Tensor::zeros([3, 16, 16], (Kind::Float, Device::Cpu));
        let (x, y) = a.apply(&img, &lbl, 32);
        assert_eq!(x.size(), vec![1, 32, 32]);
        assert_eq!(y.size(), vec![3, 32, 32]);
        assert_eq!(x.double_value(&[0, 16, 16]), 1.0);
        assert_eq!(x.double_value(&[0, 2, 2]), 0.0);
        assert!((x.sum(Kind::Double).double_value(&[]) - 256.0).abs() < 1e-3);
    }

    #[test]
    fn a_half_turn_reverses_the_flows() {
        let a = Cp4Augment { scale: 1.0, angle: 180.0, flip: false, translate: (0.0, 0.0) };
        let img = Tensor::ones([1, 8, 8], (Kind::Float, Device::Cpu));
        let lbl = Tensor::cat(
            &[
                Tensor::ones([1, 8, 8], (Kind::Float, Device::Cpu)),
                Tensor::ones([2, 8, 8], (Kind::Float, Device::Cpu)) * 0.6,
            ],
            0,
        );
        let (_, y) = a.apply(&img, &lbl, 8);
        assert!((y.double_value(&[1, 4, 4]) + 0.6).abs() < 1e-5);
        assert!((y.double_value(&[2, 4, 4]) + 0.6).abs() < 1e-5);
    }
}
