//! Polygons and rectangles -> label masks, and the region crops training uses.
//!
//! Reference: NimbusImage's Python "Cellpose retrain" worker. Per location it does
//! `mask[skimage.draw.polygon2mask(frame_shape, [(c.y, c.x) ...])] = i + 1` for each training
//! annotation in order (later ones overwrite earlier ones), then crops image and mask to each
//! region annotation's bounding box `[int(min y):int(max y), int(min x):int(max x)]`.
//!
//! [`fill_polygon`] gives exactly the pixels of scikit-image 0.26 `polygon2mask`, whose
//! `draw.polygon` keeps pixel (row r, col c) when `_shared.geometry.point_in_polygon(c, r)` is
//! non-zero. That test (O'Rourke's, "Computational Geometry in C", ch. 7) is *closed*: it counts a
//! horizontal ray's crossings to the right (`r_cross`) and to the left (`l_cross`) of the pixel
//! centre and returns INSIDE when `r_cross` is odd, EDGE when the two parities differ (centre on an
//! edge), VERTEX when the centre is within 1e-12 of a vertex, OUTSIDE otherwise. So boundary
//! centres are in, self-intersections follow the even-odd rule, and a degenerate (zero-area)
//! polygon still draws the pixel centres on its edges.
//!
//! Instead of testing every pixel of the bounding box against every edge (skimage) or every pixel
//! of the frame (the reference's full-frame masks), each edge contributes one crossing per integer
//! row it spans; per row the crossings are sorted and spans between them filled: cost is
//! O(perimeter rows + filled pixels), independent of the frame. Where a crossing lands near a pixel
//! centre, that one pixel is decided by skimage's own floating-point expression, so ties (centres
//! exactly on an edge, integer and half-integer vertices) resolve as skimage resolves them.
//!
//! Why not a crate: `imageproc::drawing::draw_polygon_mut` takes integer vertices and fills
//! by its own scanline rounding, and `geo`'s `Contains` excludes the boundary while `Intersects`
//! uses exact predicates without skimage's vertex tolerance; neither equals polygon2mask.

use std::borrow::Borrow;

use ndarray::{s, Array2, ArrayViewMut2};

use crate::annotations::Annotation;

/// Label value type of the masks (0 = background, i+1 = the i-th annotation).
pub type Label = u32;

/// skimage `point_in_polygon`'s vertex tolerance (`eps = 1e-12`).
const VERTEX_EPS: f64 = 1e-12;

/// Why a region or a rasterization cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum RasterizeError {
    /// The region's bounding box holds no whole pixel inside the frame.
    #[error(
        "region annotation {id}: its bounding box x {x0}..{x1}, y {y0}..{y1} (truncated to whole pixels) holds no \
         pixel of the {width}x{height} frame; redraw the region over the image"
    )]
    EmptyRegion { id: String, x0: i64, x1: i64, y0: i64, y1: i64, width: usize, height: usize },
    /// The region is larger than the configured pixel budget.
    #[error(
        "region annotation {id} covers {width}x{height} = {pixels} pixels, more than the budget of {max_pixels}; \
         draw smaller regions (or raise the pixel budget)"
    )]
    RegionTooLarge { id: String, width: usize, height: usize, pixels: u64, max_pixels: u64 },
    /// The region is too small to train on or score.
    #[error(
        "region annotation {id} covers only {width}x{height} pixels; a training or validation region needs at \
         least {min}x{min} pixels (the network halves the image four times): draw it larger, around annotated cells"
    )]
    RegionTooSmall { id: String, width: usize, height: usize, min: usize },
    /// More annotations at one location than labels fit in [`Label`].
    #[error("{count} annotations at one location do not fit {bits}-bit labels; use fewer annotations per location")]
    TooManyLabels { count: usize, bits: u32 },
}

/// A half-open pixel rectangle `[x0, x1) x [y0, y1)` of a frame (x = column, y = row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// First column.
    pub x0: usize,
    /// First row.
    pub y0: usize,
    /// One past the last column.
    pub x1: usize,
    /// One past the last row.
    pub y1: usize,
}

impl Region {
    /// Whether the two share at least one pixel (ends are exclusive, so touching edges do not).
    pub fn overlaps(&self, other: &Region) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }

    /// The whole frame of shape `(height, width)`.
    pub fn full(frame: (usize, usize)) -> Region {
        Region { x0: 0, y0: 0, x1: frame.1, y1: frame.0 }
    }

    /// The crop of a region annotation as the reference worker slices it:
    /// `[int(min y):int(max y), int(min x):int(max x)]` (int() truncates towards zero, the maximum
    /// is exclusive), clipped to the frame of shape `(height, width)`.
    ///
    /// Deliberate difference: Python would read a negative truncated start as an index from the
    /// end of the frame; here it is clipped to 0. An empty result is an error naming the annotation.
    pub fn from_annotation(annotation: &Annotation, frame: (usize, usize)) -> Result<Region, RasterizeError> {
        let (mut min_x, mut max_x, mut min_y, mut max_y) =
            (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in &annotation.points {
            (min_x, max_x, min_y, max_y) = (min_x.min(x), max_x.max(x), min_y.min(y), max_y.max(y));
        }
        // `as` truncates towards zero like Python's int(); coordinates are finite and bounded by
        // MAX_COORDINATE (Annotation::parse), and an empty point list gives empty (saturated) bounds.
        let (x0, x1, y0, y1) = (min_x as i64, max_x as i64, min_y as i64, max_y as i64);
        let (height, width) = frame;
        let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
        let region =
            Region { x0: clip(x0, width), x1: clip(x1, width), y0: clip(y0, height), y1: clip(y1, height) };
        if region.is_empty() {
            return Err(RasterizeError::EmptyRegion {
                id: annotation.id.clone(),
                x0,
                x1,
                y0,
                y1,
                width,
                height,
            });
        }
        Ok(region)
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.x1.saturating_sub(self.x0)
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.y1.saturating_sub(self.y0)
    }

    /// `(height, width)`, the shape of the region's arrays.
    pub fn shape(&self) -> (usize, usize) {
        (self.height(), self.width())
    }

    /// `(x0, y0)`, the offset argument of [`rasterize_labels`].
    pub fn offset(&self) -> (usize, usize) {
        (self.x0, self.y0)
    }

    /// Pixel count.
    pub fn pixels(&self) -> u64 {
        self.width() as u64 * self.height() as u64
    }

    /// True when the region holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.width() == 0 || self.height() == 0
    }

    /// The smallest region containing both.
    pub(crate) fn union(&self, other: &Region) -> Region {
        Region {
            x0: self.x0.min(other.x0),
            y0: self.y0.min(other.y0),
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
        }
    }

    /// True when `inner` lies within this region.
    pub fn contains(&self, inner: &Region) -> bool {
        self.x0 <= inner.x0 && self.y0 <= inner.y0 && inner.x1 <= self.x1 && inner.y1 <= self.y1
    }

    /// `inner`'s rows and columns relative to this region's origin, e.g. to cut one region out of
    /// the union crop with `array.slice(s![rows, cols])`; `None` if `inner` is not inside.
    pub fn sub_ranges(&self, inner: &Region) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        self.contains(inner)
            .then(|| (inner.y0 - self.y0..inner.y1 - self.y0, inner.x0 - self.x0..inner.x1 - self.x0))
    }

    /// Fails when the region has more than `max_pixels` pixels or a side under
    /// [`crate::train::data::MIN_SIDE`] (what `train` refuses for an image file); `id` names the
    /// region annotation.
    pub fn check_budget(&self, id: &str, max_pixels: u64) -> Result<(), RasterizeError> {
        let min = crate::train::data::MIN_SIDE;
        if self.width() < min || self.height() < min {
            return Err(RasterizeError::RegionTooSmall {
                id: id.to_string(),
                width: self.width(),
                height: self.height(),
                min,
            });
        }
        if self.pixels() > max_pixels {
            return Err(RasterizeError::RegionTooLarge {
                id: id.to_string(),
                width: self.width(),
                height: self.height(),
                pixels: self.pixels(),
                max_pixels,
            });
        }
        Ok(())
    }
}

/// The bounding box of all `regions` (what to fetch from the server for one location), or `None`
/// when there are none.
pub fn union_bbox<R: Borrow<Region>>(regions: impl IntoIterator<Item = R>) -> Option<Region> {
    regions.into_iter().map(|r| *r.borrow()).reduce(|a, b| a.union(&b))
}

/// The label mask of a `shape = (height, width)` crop whose top-left pixel is frame pixel
/// `offset = (x0, y0)`: annotation i (in order) is drawn with label i+1 using polygon2mask's pixel
/// rule, later annotations overwriting earlier ones; parts outside the crop are not drawn. With
/// offset (0, 0) and the frame's shape this is the reference worker's full-frame mask; otherwise it
/// equals that mask sliced to the crop, without ever allocating the frame.
///
/// The crop must lie inside the frame (true for [`Region`]s): skimage draws no pixel at a negative
/// index, and offsets are unsigned here.
pub fn rasterize_labels<A: Borrow<Annotation>>(
    shape: (usize, usize),
    annotations: &[A],
    offset: (usize, usize),
) -> Result<Array2<Label>, RasterizeError> {
    if Label::try_from(annotations.len()).is_err() {
        return Err(RasterizeError::TooManyLabels { count: annotations.len(), bits: Label::BITS });
    }
    let mut labels = Array2::<Label>::zeros(shape);
    let mut scratch = Scanline::default();
    for (i, a) in annotations.iter().enumerate() {
        // Fits: checked against Label::MAX above (i + 1 <= len).
        let label = (i + 1) as Label;
        scratch.fill(&mut labels.view_mut(), offset, &a.borrow().points, label);
    }
    Ok(labels)
}

/// [`rasterize_labels`] for a region crop: an array of the region's shape.
pub fn rasterize_region<A: Borrow<Annotation>>(
    region: &Region,
    annotations: &[A],
) -> Result<Array2<Label>, RasterizeError> {
    rasterize_labels(region.shape(), annotations, region.offset())
}

/// Sets to `label` every pixel of `labels` whose centre skimage.draw.polygon2mask would put in the
/// polygon `points` (`(x, y)` = (column, row) in frame coordinates); `labels` holds frame pixels
/// `[y0, y0 + rows) x [x0, x0 + cols)` for `offset = (x0, y0)`. Points should lie within
/// +/-[`crate::annotations::MAX_COORDINATE`] (as parsed annotations do) for exact agreement.
pub fn fill_polygon(
    labels: &mut ArrayViewMut2<Label>,
    offset: (usize, usize),
    points: &[(f64, f64)],
    label: Label,
) {
    Scanline::default().fill(labels, offset, points, label);
}

/// One edge crossing on one row: frame column where a parity flips.
#[derive(Debug, Clone, Copy)]
struct Crossing {
    row: i64,
    col: i64,
    /// true: flips the right-ray parity (`r_cross`), false: the left-ray parity (`l_cross`).
    right: bool,
}

/// Reusable buffers, so rasterizing many polygons allocates once.
#[derive(Debug, Default)]
struct Scanline {
    crossings: Vec<Crossing>,
    /// Counting-sort output, swapped with `crossings`.
    sorted: Vec<Crossing>,
    /// Counting-sort cursors, one per row.
    cursors: Vec<usize>,
}

impl Scanline {
    fn fill(
        &mut self,
        labels: &mut ArrayViewMut2<Label>,
        offset: (usize, usize),
        points: &[(f64, f64)],
        label: Label,
    ) {
        let (rows, cols) = labels.dim();
        if points.is_empty() || rows == 0 || cols == 0 {
            return;
        }
        // Crop bounds in frame pixels, half-open. Frame sizes are far below i64::MAX.
        let (row0, col0) = (offset.1 as i64, offset.0 as i64);
        let (row1, col1) = (row0 + rows as i64, col0 + cols as i64);

        self.collect_crossings(points, row0, row1);
        self.sort_crossings();

        let mut fill_span = |row: i64, from: i64, to: i64| {
            let (a, b) = (from.max(col0), to.min(col1));
            if a < b {
                let (r, a, b) = ((row - row0) as usize, (a - col0) as usize, (b - col0) as usize);
                let mut line = labels.row_mut(r);
                // A contiguous row (any standard-layout array) fills as a slice: ndarray's
                // general slicing costs as much as the fill itself for cell-sized spans.
                match line.as_slice_mut() {
                    Some(px) => px[a..b].fill(label),
                    None => line.slice_mut(s![a..b]).fill(label),
                }
            }
        };
        let mut k = 0;
        while k < self.crossings.len() {
            let row = self.crossings[k].row;
            // Parities at column -infinity are 0: a closed ring crosses every row an even number
            // of times for each ray direction (the straddle tests below are exact comparisons).
            let (mut right_odd, mut left_odd) = (false, false);
            let mut from = i64::MIN;
            while k < self.crossings.len() && self.crossings[k].row == row {
                let at = self.crossings[k].col;
                if right_odd || left_odd {
                    fill_span(row, from, at);
                }
                while k < self.crossings.len() && self.crossings[k].row == row && self.crossings[k].col == at
                {
                    if self.crossings[k].right {
                        right_odd = !right_odd;
                    } else {
                        left_odd = !left_odd;
                    }
                    k += 1;
                }
                from = at;
            }
            debug_assert!(!right_odd && !left_odd, "unbalanced crossings on row {row}");
        }

        // skimage returns VERTEX (drawn) for a centre within eps of any vertex, whatever the
        // crossings say; only the pixel nearest a vertex can be that close.
        for &(x, y) in points {
            let (c, r) = (x.round(), y.round());
            let (dx, dy) = (x - c, y - r);
            if -VERTEX_EPS < dx && dx < VERTEX_EPS && -VERTEX_EPS < dy && dy < VERTEX_EPS {
                let (r, c) = (r as i64, c as i64);
                if (row0..row1).contains(&r) && (col0..col1).contains(&c) {
                    labels[[(r - row0) as usize, (c - col0) as usize]] = label;
                }
            }
        }
    }

    /// Orders crossings by (row, col): a counting sort by row (rows span the polygon's height),
    /// then a sort of each row's few crossings (a general sort of all of them cost as much as
    /// the fill). The order of flips at one column does not matter.
    fn sort_crossings(&mut self) {
        let Some(lo) = self.crossings.iter().map(|c| c.row).min() else { return };
        let hi = self.crossings.iter().map(|c| c.row).max().unwrap_or(lo);
        let rows = (hi - lo + 1) as usize;
        self.cursors.clear();
        self.cursors.resize(rows + 1, 0);
        for c in &self.crossings {
            self.cursors[(c.row - lo) as usize + 1] += 1;
        }
        for i in 0..rows {
            self.cursors[i + 1] += self.cursors[i];
        }
        self.sorted.clear();
        self.sorted.resize(self.crossings.len(), Crossing { row: 0, col: 0, right: false });
        // After placement cursors[i] is the end of row i, i.e. the start of row i + 1.
        for c in &self.crossings {
            let at = &mut self.cursors[(c.row - lo) as usize];
            self.sorted[*at] = *c;
            *at += 1;
        }
        let mut start = 0;
        for &end in &self.cursors[..rows] {
            self.sorted[start..end].sort_unstable_by_key(|c| c.col);
            start = end;
        }
        std::mem::swap(&mut self.crossings, &mut self.sorted);
    }

    /// For every edge and every integer row `r` in `[row0, row1)` it may cross, the columns where
    /// skimage's right- and left-ray crossing counts change. skimage, for the pixel (r, c), walks
    /// edges from the previous vertex (x1, y1) to the current one (x0, y0), both relative to the
    /// centre, and counts a right crossing when `(y0 > 0) != (y1 > 0)` and
    /// `(x0*y1 - x1*y0) / (y1 - y0) > 0`, a left one when `(y0 < 0) != (y1 < 0)` and that value is
    /// `< 0`. The value is the crossing's column minus c: it is positive for every c left of the
    /// crossing, so a right crossing covers columns `< split` and a left one columns `>= split`.
    fn collect_crossings(&mut self, points: &[(f64, f64)], row0: i64, row1: i64) {
        self.crossings.clear();
        let n = points.len();
        for i in 0..n {
            let (xi, yi) = points[i];
            let (xj, yj) = points[(i + n - 1) % n];
            let (lo, hi) = (yi.min(yj), yi.max(yj));
            // Only rows with lo <= r <= hi can straddle; coordinates are bounded, so the casts are exact.
            let first = (lo.ceil() as i64).max(row0);
            let last = (hi.floor() as i64).min(row1 - 1);
            for row in first..=last {
                let r = row as f64;
                let (y0, y1) = (yi - r, yj - r);
                let right = (y0 > 0.0) != (y1 > 0.0);
                let left = (y0 < 0.0) != (y1 < 0.0);
                if !(right || left) {
                    continue;
                }
                // Nearest column to the crossing. Only there can rounding make skimage's sign
                // differ from the exact one: elsewhere |crossing - c| >= 0.5, far above the
                // ~1e-6 error bound for coordinates within MAX_COORDINATE.
                let estimate = xj + (xi - xj) * ((r - yj) / (yi - yj));
                let c = estimate.round() as i64;
                let v = skimage_crossing_value(xi, yi, xj, yj, c as f64, r);
                if right {
                    self.crossings.push(Crossing { row, col: if v > 0.0 { c + 1 } else { c }, right: true });
                }
                if left {
                    self.crossings.push(Crossing { row, col: if v < 0.0 { c } else { c + 1 }, right: false });
                }
            }
        }
    }
}

/// skimage `_shared/geometry.pyx` `point_in_polygon`'s crossing value for the edge from
/// (xj, yj) to (xi, yi) and the centre (c, r), with its exact operation order:
/// `x0 = xi - c; y0 = yi - r; x1 = xj - c; y1 = yj - r; (x0*y1 - x1*y0) / (y1 - y0)`.
#[inline]
fn skimage_crossing_value(xi: f64, yi: f64, xj: f64, yj: f64, c: f64, r: f64) -> f64 {
    let (x0, y0, x1, y1) = (xi - c, yi - r, xj - c, yj - r);
    (x0 * y1 - x1 * y0) / (y1 - y0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(shape: (usize, usize), points: &[(f64, f64)]) -> Array2<Label> {
        let mut m = Array2::zeros(shape);
        fill_polygon(&mut m.view_mut(), (0, 0), points, 1);
        m
    }

    #[test]
    fn closed_square_includes_its_boundary_centres() {
        // polygon2mask((5, 5), [(0,0),(0,2),(2,2),(2,0)]) is the 3x3 block: boundary centres count.
        let m = mask((5, 5), &[(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (0.0, 2.0)]);
        let expected = Array2::from_shape_fn((5, 5), |(r, c)| (r <= 2 && c <= 2) as Label);
        assert_eq!(m, expected);
    }

    #[test]
    fn degenerate_polygon_draws_only_its_vertices() {
        // Zero area, every edge traversed twice: the two traversals cancel on edge centres, so
        // polygon2mask((6, 6), [(0,0),(4,4),(2,2)]) draws just the three vertex pixels.
        let m = mask((6, 6), &[(0.0, 0.0), (4.0, 4.0), (2.0, 2.0)]);
        let expected = Array2::from_shape_fn((6, 6), |(r, c)| (r == c && r % 2 == 0 && r <= 4) as Label);
        assert_eq!(m, expected);
    }

    #[test]
    fn region_truncates_towards_zero_and_clips() {
        let a = Annotation {
            id: "r".into(),
            shape: crate::annotations::Shape::Rectangle,
            points: vec![(-3.7, 2.9), (60.9, 2.9), (60.9, 50.2), (-3.7, 50.2)],
            tags: vec![],
            channel: 0,
            location: crate::annotations::Location { time: 0, z: 0, xy: 0 },
        };
        assert_eq!(Region::from_annotation(&a, (40, 100)).unwrap(), Region { x0: 0, y0: 2, x1: 60, y1: 40 });
        let r = |x0, y0, x1, y1| Region { x0, y0, x1, y1 };
        assert!(r(0, 0, 10, 10).overlaps(&r(9, 9, 20, 20)), "one shared pixel");
        assert!(!r(0, 0, 10, 10).overlaps(&r(10, 0, 20, 10)), "touching edges share no pixel");
        assert!(!r(0, 0, 10, 10).overlaps(&r(0, 10, 10, 20)));
        assert!(r(0, 0, 100, 100).overlaps(&r(40, 40, 50, 50)), "containment");
        let e = Region::from_annotation(&a, (2, 100)).unwrap_err();
        assert!(matches!(e, RasterizeError::EmptyRegion { ref id, .. } if id == "r"), "{e}");
    }
}
