//! Synthetic microscopy: touching cells with nuclei in two channels, with exact label masks.
//! Used by the demo, tests and benchmarks so none of them needs external data.

use std::path::{Path, PathBuf};

use image::{ImageBuffer, Luma};
use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Shape of a synthetic image.
#[derive(Debug, Clone, Copy)]
pub struct SynthSpec {
    pub height: usize,
    pub width: usize,
    pub n_cells: usize,
    /// Cell radius range in pixels.
    pub radius: (f64, f64),
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec { height: 128, width: 128, n_cells: 12, radius: (8.0, 13.0), seed: 0 }
    }
}

/// One synthetic cell: an ellipse.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub cy: f64,
    pub cx: f64,
    pub ry: f64,
    pub rx: f64,
    cos: f64,
    sin: f64,
    brightness: f64,
}

impl Cell {
    /// The outline as `n` polygon vertices `(x, y)` (what an annotator would draw).
    pub fn polygon(&self, n: usize) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| {
                let t = i as f64 / n as f64 * std::f64::consts::TAU;
                let (u, v) = (self.rx * t.cos(), self.ry * t.sin());
                (self.cx + u * self.cos - v * self.sin, self.cy + u * self.sin + v * self.cos)
            })
            .collect()
    }

    /// Axis-aligned bounding box `(x0, y0, x1, y1)`.
    pub(crate) fn bbox(&self) -> (f64, f64, f64, f64) {
        let p = self.polygon(64);
        let xs = p.iter().map(|q| q.0);
        let ys = p.iter().map(|q| q.1);
        (
            xs.clone().fold(f64::INFINITY, f64::min),
            ys.clone().fold(f64::INFINITY, f64::min),
            xs.fold(f64::NEG_INFINITY, f64::max),
            ys.fold(f64::NEG_INFINITY, f64::max),
        )
    }

    /// Squared normalised ellipse distance (< 1 inside), `k` shrinks the ellipse (nucleus).
    fn dist2(&self, y: f64, x: f64, k: f64) -> f64 {
        let (dy, dx) = (y - self.cy, x - self.cx);
        let u = dx * self.cos + dy * self.sin;
        let v = -dx * self.sin + dy * self.cos;
        (u / (self.rx * k)).powi(2) + (v / (self.ry * k)).powi(2)
    }
}

/// One image `[2, H, W]` (cytoplasm, nuclei; uint16-like intensities) and its labels.
pub fn synth_image(spec: &SynthSpec) -> (Array3<f32>, Array2<u32>) {
    let s = synth_scene(spec);
    (s.image, s.labels)
}

/// A synthetic image with the cells that made it.
pub struct Scene {
    pub image: Array3<f32>,
    pub labels: Array2<u32>,
    /// Cells in label order (label i+1 is `cells[i]`); cells that ended up with no pixel are absent.
    pub cells: Vec<Cell>,
}

/// [`synth_image`], also returning the cell geometry (for annotations).
pub(crate) fn synth_scene(spec: &SynthSpec) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let (h, w) = (spec.height, spec.width);
    let mut cells: Vec<Cell> = Vec::new();
    let mut tries = 0;
    while cells.len() < spec.n_cells && tries < spec.n_cells * 200 {
        tries += 1;
        let r = rng.gen_range(spec.radius.0..=spec.radius.1);
        let (cy, cx) = (rng.gen_range(0.0..h as f64), rng.gen_range(0.0..w as f64));
        // allow touching, not heavy overlap
        if cells
            .iter()
            .any(|c| ((c.cy - cy).powi(2) + (c.cx - cx).powi(2)).sqrt() < 0.85 * (r + c.rx.max(c.ry)))
        {
            continue;
        }
        let ecc = rng.gen_range(0.7..1.0);
        let th: f64 = rng.gen_range(0.0..std::f64::consts::PI);
        cells.push(Cell {
            cy,
            cx,
            ry: r * ecc,
            rx: r,
            cos: th.cos(),
            sin: th.sin(),
            brightness: rng.gen_range(0.6..1.0),
        });
    }
    let mut labels = Array2::<u32>::zeros((h, w));
    let mut cyto = Array2::<f32>::zeros((h, w));
    let mut nuc = Array2::<f32>::zeros((h, w));
    for y in 0..h {
        for x in 0..w {
            let (yf, xf) = (y as f64, x as f64);
            let best = cells
                .iter()
                .enumerate()
                .map(|(i, c)| (i, c.dist2(yf, xf, 1.0)))
                .filter(|(_, d)| *d < 1.0)
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((i, d)) = best {
                let c = &cells[i];
                labels[[y, x]] = i as u32 + 1;
                // brighter rim, dimmer centre: cytoplasm-like texture
                cyto[[y, x]] = (c.brightness * (900.0 + 500.0 * d)) as f32;
                if c.dist2(yf, xf, 0.45) < 1.0 {
                    nuc[[y, x]] = (1400.0 * c.brightness) as f32;
                    cyto[[y, x]] *= 0.7;
                }
            }
        }
    }
    let blur = |a: &Array2<f32>| -> Array2<f32> {
        let img: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(w as u32, h as u32, a.iter().copied().collect())
                .unwrap_or_else(|| ImageBuffer::new(w as u32, h as u32));
        let b = imageproc::filter::gaussian_blur_f32(&img, 1.0);
        Array2::from_shape_vec((h, w), b.into_raw()).unwrap_or_else(|_| a.clone())
    };
    let (cyto, nuc) = (blur(&cyto), blur(&nuc));
    let mut img = Array3::<f32>::zeros((2, h, w));
    for ((c, y, x), v) in img.indexed_iter_mut() {
        let base = if c == 0 { cyto[[y, x]] + 200.0 } else { nuc[[y, x]] + 150.0 };
        let noise: f64 = rng.gen_range(-1.0..1.0) + rng.gen_range(-1.0..1.0) + rng.gen_range(-1.0..1.0);
        *v = (base as f64 + 40.0 * noise).max(0.0) as f32;
    }
    // relabel consecutively in raster order (cells that found no pixels leave no gap)
    let mut map = std::collections::HashMap::new();
    for l in labels.iter_mut().filter(|l| **l > 0) {
        let n = map.len() as u32 + 1;
        *l = *map.entry(*l).or_insert(n);
    }
    let mut ordered: Vec<(u32, Cell)> =
        map.iter().map(|(&old, &new)| (new, cells[old as usize - 1])).collect();
    ordered.sort_by_key(|(n, _)| *n);
    Scene { image: img, labels, cells: ordered.into_iter().map(|(_, c)| c).collect() }
}

/// Writes `n` images as `img_NNN.tif` (2-page uint16) and `img_NNN_masks.tif` into `dir`.
pub fn write_folder(
    dir: &Path,
    n: usize,
    spec: &SynthSpec,
) -> Result<Vec<PathBuf>, crate::imageio::ImageError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| crate::imageio::ImageError { path: dir.into(), kind: e.into() })?;
    let mut out = Vec::new();
    for i in 0..n {
        let (img, labels) =
            synth_image(&SynthSpec { seed: spec.seed.wrapping_add(i as u64 * 7919), ..*spec });
        let p = dir.join(format!("img_{i:03}.tif"));
        crate::imageio::write_image_u16(&p, &img)?;
        crate::imageio::write_labels_tiff(&dir.join(format!("img_{i:03}_masks.tif")), labels.view())?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_images_are_deterministic_and_labelled() {
        let spec = SynthSpec::default();
        let (a, la) = synth_image(&spec);
        let (b, lb) = synth_image(&spec);
        assert_eq!(a, b);
        assert_eq!(la, lb);
        let n = la.iter().copied().max().unwrap_or(0);
        assert!(n >= 8, "only {n} cells");
        // nuclei are brighter inside cells than outside
        let inside: Vec<f32> = a
            .index_axis(ndarray::Axis(0), 1)
            .iter()
            .zip(la.iter())
            .filter(|(_, l)| **l > 0)
            .map(|(v, _)| *v)
            .collect();
        let mean_in = inside.iter().sum::<f32>() / inside.len() as f32;
        assert!(mean_in > 300.0, "{mean_in}");
    }
}
