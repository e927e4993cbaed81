//! The QC picture a biologist looks at first: for each validation image, the image with the
//! annotated outlines and a model's predicted outlines on top, one column per model (base and
//! trained side by side), AP@0.5 and TP/FP/FN under each. Misses (annotated cells no prediction
//! matches at IoU 0.5) and false positives (predictions that match nothing) are filled, so what
//! went wrong is visible at a glance, as in ZeroCostDL4Mic's and BIOP's QC pictures.
//!
//! Colours are from the Okabe-Ito palette (safe for the common colour-vision deficiencies):
//! annotated = orange, drawn on the ring just outside each annotated cell, predicted = sky blue,
//! on each predicted cell's own edge pixels: a prediction that matches its annotation exactly
//! shows both lines side by side (where the two still fall on one pixel, blue is drawn). The image is its first channel, contrast-stretched between
//! its 1st and 99th percentiles. Images with a side over [`MAX_SIDE`] pixels are shown
//! downsampled (the scores are computed at full size); small crops are enlarged to [`MIN_SIDE`].

use ndarray::{Array2, Array3};
use plotters::prelude::*;

use super::plot::{register_font, PlotError};
use crate::segment::matched_pairs;

/// Annotated (ground-truth) outlines: Okabe-Ito orange.
pub const TRUTH: [u8; 3] = [230, 159, 0];
/// Predicted outlines: Okabe-Ito sky blue.
pub const PREDICTED: [u8; 3] = [86, 180, 233];
/// How much of a missed or false-positive object's fill colour covers the image.
const FILL_ALPHA: f32 = 0.4;
/// A shown image's longer side at most (larger ones are downsampled for the picture only).
pub const MAX_SIDE: usize = 768;
/// A shown image's longer side at least (small crops are enlarged by a whole factor).
pub const MIN_SIDE: usize = 256;
/// Validation images shown in a job's report (the first ones; the scores cover all).
pub const MAX_IMAGES: usize = 3;

const MARGIN: u32 = 12;
const HEADER: u32 = 66;
const CAPTION: u32 = 44;

/// One image of the picture: its pixels and its annotation.
pub struct OverlayImage<'a> {
    pub name: &'a str,
    /// `[C, H, W]`; channel 0 is shown.
    pub image: &'a Array3<f32>,
    pub truth: &'a Array2<u32>,
}

/// One model's column: its name and its masks, one per image, in the images' order.
pub struct OverlayColumn<'a> {
    pub label: String,
    pub masks: Vec<&'a Array2<u32>>,
}

/// Matches `truth` and `pred` at IoU 0.5: (TP, FP, FN, which truth labels and which predicted
/// labels are matched). The counts are the scoring's (`segment::average_precision`).
fn match_at_half(truth: &Array2<u32>, pred: &Array2<u32>) -> Result<Counts, PlotError> {
    let pairs = matched_pairs(truth.view(), pred.view(), 0.5).map_err(|e| PlotError(e.to_string()))?;
    let labels = |m: &Array2<u32>| {
        let mut l: Vec<u32> = m.iter().copied().filter(|&v| v != 0).collect();
        l.sort_unstable();
        l.dedup();
        l
    };
    let (t, p) = (labels(truth), labels(pred));
    let tp = pairs.len();
    Ok(Counts {
        tp,
        fp: p.len() - tp,
        fn_: t.len() - tp,
        truth_matched: pairs.iter().map(|m| m.true_label).collect(),
        pred_matched: pairs.iter().map(|m| m.pred_label).collect(),
    })
}

struct Counts {
    tp: usize,
    fp: usize,
    fn_: usize,
    truth_matched: std::collections::HashSet<u32>,
    pred_matched: std::collections::HashSet<u32>,
}

impl Counts {
    fn ap(&self) -> f64 {
        let d = (self.tp + self.fp + self.fn_) as f64;
        if d > 0.0 {
            self.tp as f64 / d
        } else {
            f64::NAN
        }
    }
}

/// The shown size of an `h` x `w` image: downsampled to [`MAX_SIDE`], enlarged by a whole
/// factor to at least [`MIN_SIDE`].
pub(crate) fn shown_size(h: usize, w: usize) -> (usize, usize) {
    let side = h.max(w).max(1);
    if side > MAX_SIDE {
        let s = MAX_SIDE as f64 / side as f64;
        (((h as f64 * s).round() as usize).max(1), ((w as f64 * s).round() as usize).max(1))
    } else {
        let k = MIN_SIDE.div_ceil(side).max(1);
        (h * k, w * k)
    }
}

/// `m` sampled onto the shown grid (nearest source pixel of each shown pixel's centre).
fn resample<T: Copy>(m: &Array2<T>, (sh, sw): (usize, usize)) -> Array2<T> {
    let (h, w) = m.dim();
    Array2::from_shape_fn((sh, sw), |(y, x)| {
        let sy = ((y as f64 + 0.5) * h as f64 / sh as f64) as usize;
        let sx = ((x as f64 + 0.5) * w as f64 / sw as f64) as usize;
        m[[sy.min(h - 1), sx.min(w - 1)]]
    })
}

/// The boundary pixels of a label image: a labelled pixel with a 4-neighbour of another label
/// (background included); the image's edge is not a boundary.
pub fn outline(labels: &Array2<u32>) -> Array2<bool> {
    Array2::from_shape_fn(labels.dim(), |(y, x)| {
        let l = labels[[y, x]];
        l != 0 && neighbours(labels, y, x).any(|n| n != l)
    })
}

/// The labels of the 4-neighbours of `(y, x)` inside the image.
fn neighbours(labels: &Array2<u32>, y: usize, x: usize) -> impl Iterator<Item = u32> + '_ {
    [(y.wrapping_sub(1), x), (y + 1, x), (y, x.wrapping_sub(1)), (y, x + 1)]
        .into_iter()
        .filter_map(move |(ny, nx)| labels.get([ny, nx]).copied())
}

/// The ring just outside each labelled object: a pixel with a 4-neighbour of another, non-zero
/// label. The annotated outlines are drawn here and the predicted ones on [`outline`] (just
/// inside), so a prediction that matches its annotation to the pixel shows both lines side by
/// side instead of hiding the annotation under it.
pub fn outer_outline(labels: &Array2<u32>) -> Array2<bool> {
    Array2::from_shape_fn(labels.dim(), |(y, x)| {
        let l = labels[[y, x]];
        neighbours(labels, y, x).any(|n| n != 0 && n != l)
    })
}

/// Channel 0 of `image` as grey levels, stretched between its 1st and 99th percentiles.
fn grey(image: &Array3<f32>) -> Array2<u8> {
    let c0 = image.index_axis(ndarray::Axis(0), 0);
    let mut v: Vec<f32> = c0.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_unstable_by(f32::total_cmp);
    let at =
        |q: f64| v.get(((v.len().saturating_sub(1)) as f64 * q).round() as usize).copied().unwrap_or(0.0);
    let (lo, hi) = (at(0.01), at(0.99));
    let span = if hi > lo { hi - lo } else { 1.0 };
    c0.mapv(|p| (((p - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8)
}

/// `s` cut to `n` characters, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Where the image of `row` and `col` starts in a picture of images with shown sizes `sizes`.
pub(crate) fn cell_origin(sizes: &[(usize, usize)], row: usize, col: usize) -> (u32, u32) {
    let cell_w = sizes.iter().map(|s| s.1).max().unwrap_or(0) as u32 + MARGIN;
    let y = HEADER + sizes[..row].iter().map(|s| s.0 as u32 + CAPTION + MARGIN).sum::<u32>();
    (MARGIN + col as u32 * cell_w, y)
}

/// The report's picture: the base model's masks (`before`) and the trained model's (`after`),
/// one per image, in two columns labelled with the models' names. What the job report and
/// `train --test-dir` draw.
pub fn render_before_after(
    images: &[OverlayImage],
    (base, before): (&str, Vec<&Array2<u32>>),
    (trained, after): (&str, Vec<&Array2<u32>>),
) -> Result<Vec<u8>, PlotError> {
    let columns = [
        OverlayColumn { label: format!("base: {base}"), masks: before },
        OverlayColumn { label: format!("trained: {trained}"), masks: after },
    ];
    render_overlay(images, &columns)
}

/// Renders the picture: one row per image, one column per model. The images and every
/// column's masks must have the same shapes.
pub fn render_overlay(images: &[OverlayImage], columns: &[OverlayColumn]) -> Result<Vec<u8>, PlotError> {
    if images.is_empty() || columns.is_empty() {
        return Err(PlotError("an overlay needs at least one image and one model".into()));
    }
    for c in columns {
        if c.masks.len() != images.len() {
            return Err(PlotError(format!(
                "{}: {} masks for {} images",
                c.label,
                c.masks.len(),
                images.len()
            )));
        }
        for (m, i) in c.masks.iter().zip(images) {
            let (h, w) = i.truth.dim();
            if m.dim() != (h, w) || i.image.dim().1 != h || i.image.dim().2 != w {
                return Err(PlotError(format!(
                    "{}: {} masks {:?} for an image of {h}x{w}",
                    c.label,
                    i.name,
                    m.dim()
                )));
            }
        }
    }
    register_font();
    let sizes: Vec<(usize, usize)> =
        images.iter().map(|i| shown_size(i.truth.nrows(), i.truth.ncols())).collect();
    let cell_w = sizes.iter().map(|s| s.1).max().unwrap_or(0) as u32 + MARGIN;
    let width = (MARGIN + columns.len() as u32 * cell_w).max(640);
    let (_, last_y) = cell_origin(&sizes, images.len() - 1, 0);
    let height = last_y + sizes[images.len() - 1].0 as u32 + CAPTION + MARGIN;
    let mut rgb = vec![255u8; (width * height * 3) as usize];

    let mut captions = Vec::new();
    for (row, img) in images.iter().enumerate() {
        let shown = sizes[row];
        let base = resample(&grey(img.image), shown);
        let truth = resample(img.truth, shown);
        let truth_line = outer_outline(&truth);
        for (col, column) in columns.iter().enumerate() {
            let counts = match_at_half(img.truth, column.masks[row])?;
            let pred = resample(column.masks[row], shown);
            let pred_line = outline(&pred);
            let (ox, oy) = cell_origin(&sizes, row, col);
            for ((y, x), &g) in base.indexed_iter() {
                let (t, p) = (truth[[y, x]], pred[[y, x]]);
                let mut px = [g as f32; 3];
                let fill = if p != 0 && !counts.pred_matched.contains(&p) {
                    Some(PREDICTED)
                } else if t != 0 && !counts.truth_matched.contains(&t) {
                    Some(TRUTH)
                } else {
                    None
                };
                if let Some(c) = fill {
                    for k in 0..3 {
                        px[k] = px[k] * (1.0 - FILL_ALPHA) + c[k] as f32 * FILL_ALPHA;
                    }
                }
                let px = if pred_line[[y, x]] {
                    PREDICTED
                } else if truth_line[[y, x]] {
                    TRUTH
                } else {
                    px.map(|v| v.round() as u8)
                };
                let at = (((oy as usize + y) * width as usize) + ox as usize + x) * 3;
                rgb[at..at + 3].copy_from_slice(&px);
            }
            let ap = counts.ap();
            let ap = if ap.is_finite() { format!("{ap:.2}") } else { "-".into() };
            // about 7 px a character at 13-15 px: the caption stays within its cell
            let fit = (shown.1 / 7).max(24);
            captions.push((
                (ox as i32, (oy as usize + shown.0) as i32 + 4),
                clip(&format!("{} | {}", column.label, img.name), fit),
                clip(&format!("AP@0.5 {ap}  TP {}  FP {}  FN {}", counts.tp, counts.fp, counts.fn_), fit),
            ));
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        let style = ("sans-serif", 15).into_font();
        let small = ("sans-serif", 14).into_font();
        let downsampled = images.iter().zip(&sizes).any(|(i, s)| s.0 < i.truth.nrows());
        let header = [
            "outlines: orange = annotated, blue = predicted",
            "filled: annotated cell missed (orange), predicted cell that matches none (blue), at IoU 0.5",
            if downsampled {
                "large images are shown downsampled; scores are computed at full size"
            } else {
                ""
            },
        ];
        for (k, line) in header.iter().enumerate() {
            root.draw_text(line, &small.clone().into_text_style(&root), (MARGIN as i32, 6 + 18 * k as i32))
                .map_err(|e| PlotError(e.to_string()))?;
        }
        for ((x, y), label, line) in &captions {
            root.draw_text(label, &style.clone().into_text_style(&root), (*x, *y))
                .map_err(|e| PlotError(e.to_string()))?;
            root.draw_text(line, &small.clone().into_text_style(&root), (*x, *y + 19))
                .map_err(|e| PlotError(e.to_string()))?;
        }
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    let img =
        image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| PlotError("bad buffer size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| PlotError(e.to_string()))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc(m: &mut Array2<u32>, label: u32, (cy, cx): (f64, f64), r: f64) {
        for ((y, x), v) in m.indexed_iter_mut() {
            if (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2) <= r * r {
                *v = label;
            }
        }
    }

    /// A 256x256 crop (shown 1:1): cell 1 found (shifted by 2 px), cell 2 missed, and a false
    /// positive where nothing is annotated.
    fn scene() -> (Array3<f32>, Array2<u32>, Array2<u32>) {
        let image = Array3::from_shape_fn((2, 256, 256), |(c, y, x)| (c * 7 + (x + y) % 50) as f32);
        let (mut truth, mut pred) = (Array2::zeros((256, 256)), Array2::zeros((256, 256)));
        disc(&mut truth, 5, (60.0, 60.0), 25.0);
        disc(&mut truth, 9, (180.0, 70.0), 20.0);
        disc(&mut pred, 1, (62.0, 60.0), 25.0);
        disc(&mut pred, 2, (120.0, 190.0), 22.0);
        (image, truth, pred)
    }

    fn pixel(png: &[u8], (x, y): (u32, u32)) -> [u8; 3] {
        let img = image::load_from_memory(png).expect("a PNG").to_rgb8();
        img.get_pixel(x, y).0
    }

    #[test]
    fn outline_pixels_fall_on_the_mask_boundaries_and_misses_and_false_positives_are_filled() {
        let (image, truth, pred) = scene();
        let images = [OverlayImage { name: "region 1", image: &image, truth: &truth }];
        let png = render_overlay(&images, &[OverlayColumn { label: "trained".into(), masks: vec![&pred] }])
            .expect("rendered");
        let img = image::load_from_memory(&png).expect("a PNG").to_rgb8();
        let (ox, oy) = cell_origin(&[(256, 256)], 0, 0);
        let (t_line, p_line) = (outer_outline(&truth), outline(&pred));
        let (mut n_truth, mut n_pred) = (0, 0);
        for ((y, x), _) in truth.indexed_iter() {
            let px = img.get_pixel(ox + x as u32, oy + y as u32).0;
            // every orange pixel is on an annotated boundary (the ring just outside a cell), every
            // blue one on a predicted one (the cell's own edge pixels)
            // (checked on the masks themselves, not only through the functions that drew them)
            let across = |m: &Array2<u32>| {
                [(y.wrapping_sub(1), x), (y + 1, x), (y, x.wrapping_sub(1)), (y, x + 1)]
                    .iter()
                    .filter(|&&(ny, nx)| ny < 256 && nx < 256 && m[[ny, nx]] != m[[y, x]])
                    .map(|&(ny, nx)| m[[ny, nx]])
                    .collect::<Vec<u32>>()
            };
            if px == TRUTH {
                assert!(t_line[[y, x]] && !p_line[[y, x]], "orange off the annotated boundary at {y},{x}");
                assert!(
                    across(&truth).iter().any(|&l| l != 0),
                    "orange at {y},{x} borders no annotated cell"
                );
                n_truth += 1;
            }
            if px == PREDICTED {
                assert!(p_line[[y, x]], "blue off the predicted boundary at {y},{x}");
                assert!(pred[[y, x]] != 0 && !across(&pred).is_empty(), "blue at {y},{x} is no cell's edge");
                n_pred += 1;
            }
            // and every boundary pixel is drawn (the predicted one on top)
            if p_line[[y, x]] {
                assert_eq!(px, PREDICTED, "predicted boundary not drawn at {y},{x}");
            } else if t_line[[y, x]] {
                assert_eq!(px, TRUTH, "annotated boundary not drawn at {y},{x}");
            }
        }
        assert_eq!(n_pred, p_line.iter().filter(|&&b| b).count());
        assert_eq!(n_truth, (&t_line & &p_line.mapv(|b| !b)).iter().filter(|&&b| b).count());
        assert!(n_truth > 100 && n_pred > 100, "{n_truth} {n_pred}");

        // inside: the matched cell is the image itself, the miss orange-tinted, the false
        // positive blue-tinted
        let inside = |(y, x): (u32, u32)| img.get_pixel(ox + x, oy + y).0;
        let g = grey(&image);
        let plain = |(y, x): (usize, usize)| g[[y, x]];
        assert_eq!(inside((60, 60)), [plain((60, 60)); 3], "a found cell is not filled");
        let miss = inside((180, 70));
        assert!(miss[0] > miss[2] + 60, "the missed cell is tinted orange: {miss:?}");
        let fp = inside((120, 190));
        assert!(fp[2] > fp[0] + 40, "the false positive is tinted blue: {fp:?}");
        assert_eq!(pixel(&png, (ox + 5, oy + 5)), [plain((5, 5)); 3]);
    }

    #[test]
    fn base_and_trained_columns_sit_side_by_side_and_the_counts_are_the_scorings() {
        let (image, truth, pred) = scene();
        let empty = Array2::<u32>::zeros((256, 256));
        let images = [OverlayImage { name: "r", image: &image, truth: &truth }];
        let columns = [
            OverlayColumn { label: "base".into(), masks: vec![&empty] },
            OverlayColumn { label: "trained".into(), masks: vec![&pred] },
        ];
        let png = render_overlay(&images, &columns).expect("rendered");
        let img = image::load_from_memory(&png).expect("a PNG").to_rgb8();
        let (bx, by) = cell_origin(&[(256, 256)], 0, 0);
        let (tx, ty) = cell_origin(&[(256, 256)], 0, 1);
        assert!(tx >= bx + 256 && ty == by);
        // base found nothing: both annotated cells are misses (tinted), no blue anywhere in it
        let base_cell = (0..256u32).flat_map(|y| (0..256u32).map(move |x| (x, y)));
        assert!(base_cell.clone().all(|(x, y)| img.get_pixel(bx + x, by + y).0 != PREDICTED));
        let c = match_at_half(&truth, &pred).unwrap();
        let s = crate::evaluate::score_masks("r", &truth, &pred).unwrap();
        assert_eq!((c.tp as u64, c.fp as u64, c.fn_ as u64), (s.tp[0], s.fp[0], s.fn_[0]));
        assert_eq!((c.tp, c.fp, c.fn_), (1, 1, 1));
    }

    #[test]
    fn large_images_are_downsampled_and_small_ones_enlarged_for_the_picture() {
        assert_eq!(shown_size(2048, 1024), (768, 384));
        assert_eq!(shown_size(64, 48), (256, 192));
        assert_eq!(shown_size(300, 200), (300, 200));
        let m = Array2::from_shape_fn((4, 4), |(y, x)| (y * 4 + x) as u32);
        assert_eq!(resample(&m, (8, 8))[[7, 7]], 15);
        // a shown pixel takes the source pixel under its centre: (0.5, 0.5) * 2 = (1, 1)
        assert_eq!(resample(&m, (2, 2)), ndarray::array![[5, 7], [13, 15]]);
    }

    #[test]
    fn masks_of_another_shape_are_an_error_naming_the_model_and_image() {
        let (image, truth, _) = scene();
        let small = Array2::<u32>::zeros((10, 10));
        let images = [OverlayImage { name: "r1", image: &image, truth: &truth }];
        let e = render_overlay(&images, &[OverlayColumn { label: "base".into(), masks: vec![&small] }])
            .unwrap_err();
        assert!(e.0.contains("base") && e.0.contains("r1"), "{e}");
    }
}
