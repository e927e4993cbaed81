//! NimbusImage annotations (upenncontrast_annotation documents) as validated domain types.
//!
//! The Girder client hands each annotation over as the raw JSON document; [`Annotation::parse`]
//! checks everything the rasterizer and the training job rely on and says which annotation is wrong
//! and why. Only polygons and rectangles are trainable: points and lines parse to an error whose
//! [`AnnotationError::is_untrainable`] is true, so a caller can skip and count them
//! ([`parse_trainable`] does exactly that). Tag selection and grouping by location (Time, Z, XY)
//! mirror what NimbusImage's Python "Cellpose retrain" worker does before it rasterizes.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde_json::Value;

/// Largest accepted coordinate magnitude, in pixels.
///
/// Why: [`crate::rasterize`] reproduces skimage's floating-point crossing test exactly by
/// evaluating it only at the pixel nearest each edge crossing; that needs the rounding error of the
/// crossing position (about |coordinate| x 1e-15) to stay far below half a pixel. No microscope
/// frame is anywhere near 1e9 pixels wide, so anything beyond is a corrupt document.
pub(crate) const MAX_COORDINATE: f64 = 1e9;

/// Where an annotation lives in a dataset. Field order gives the grouping order: Time, then Z,
/// then XY (the order the reference worker walks locations in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// `location.Time`.
    pub time: u32,
    /// `location.Z`.
    pub z: u32,
    /// `location.XY`.
    pub xy: u32,
}

/// The trainable annotation shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A closed polygon of at least 3 points (the last point joins the first).
    Polygon,
    /// A rectangle as its 4 corners (a 5-point closed ring is normalised to 4 points).
    Rectangle,
}

/// One validated polygon or rectangle annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The document's `_id`.
    pub id: String,
    /// `shape`.
    pub shape: Shape,
    /// `coordinates` as `(x, y)` = (column, row) in frame pixels, finite and within
    /// [`MAX_COORDINATE`]; `z` is ignored. At least 3 points for a polygon, exactly 4 for a
    /// rectangle.
    pub points: Vec<(f64, f64)>,
    /// `tags`, in document order.
    pub tags: Vec<String>,
    /// `channel`.
    pub channel: u32,
    /// `location`.
    pub location: Location,
}

/// An annotation document that cannot be used, with the annotation's `_id` (or `(no _id)`).
#[derive(Debug, thiserror::Error)]
#[error("annotation {id}: {kind}")]
pub struct AnnotationError {
    /// The document's `_id`, or `(no _id)`.
    pub id: String,
    /// What is wrong.
    pub kind: AnnotationErrorKind,
}

/// What is wrong with an annotation document.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationErrorKind {
    /// A required field is absent.
    #[error("missing field `{0}`; the document is not a NimbusImage annotation")]
    MissingField(&'static str),
    /// A field has the wrong JSON type or range.
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType { field: String, expected: &'static str, found: String },
    /// A point or line: valid in NimbusImage, but it encloses no pixels.
    #[error("shape `{0}` is not trainable (only polygon and rectangle annotations are); skip it")]
    Untrainable(String),
    /// A shape NimbusImage does not define.
    #[error("unknown shape `{0}` (expected polygon or rectangle)")]
    UnknownShape(String),
    /// A polygon with fewer than 3 points.
    #[error("a polygon needs at least 3 points, this one has {0}; redraw or delete it")]
    TooFewPoints(usize),
    /// A rectangle that is not 4 corners or a 5-point closed ring.
    #[error("a rectangle needs 4 corner points (or 5 with the last equal to the first), this one has {0}")]
    RectanglePoints(usize),
    /// A 5-point rectangle whose last point differs from the first.
    #[error("a 5-point rectangle must repeat its first point last, but ({0}, {1}) != ({2}, {3})")]
    RectangleNotClosed(f64, f64, f64, f64),
    /// A coordinate that is not a finite number (JSON null stands for NaN/Infinity).
    #[error("coordinate {index} has a non-finite or missing `{axis}` ({found}); redraw the annotation")]
    NonFiniteCoordinate { index: usize, axis: &'static str, found: String },
    /// A coordinate beyond [`MAX_COORDINATE`].
    #[error("coordinate {index} has `{axis}` = {value}, beyond +/-{MAX_COORDINATE} pixels; the document is corrupt")]
    CoordinateOutOfRange { index: usize, axis: &'static str, value: f64 },
}

impl AnnotationError {
    /// True for points and lines: the caller skips these with a count instead of failing.
    pub fn is_untrainable(&self) -> bool {
        matches!(self.kind, AnnotationErrorKind::Untrainable(_))
    }
}

impl Annotation {
    /// Validates one NimbusImage annotation document (as returned by `GET /upenn_annotation`).
    pub fn parse(doc: &Value) -> Result<Annotation, AnnotationError> {
        let id = match doc.get("_id") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "(no _id)".to_string(),
        };
        let fail = |kind| AnnotationError { id: id.clone(), kind };
        if doc.get("_id").is_none() {
            return Err(fail(AnnotationErrorKind::MissingField("_id")));
        }

        let shape = match field(doc, "shape").map_err(&fail)? {
            Value::String(s) => match s.as_str() {
                "polygon" => Shape::Polygon,
                "rectangle" => Shape::Rectangle,
                "point" | "line" => return Err(fail(AnnotationErrorKind::Untrainable(s.clone()))),
                _ => return Err(fail(AnnotationErrorKind::UnknownShape(s.clone()))),
            },
            other => return Err(fail(wrong_type("shape", "a string", other))),
        };
        let tags = match field(doc, "tags").map_err(&fail)? {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, t)| match t {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(fail(wrong_type(&format!("tags[{i}]"), "a string", other))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            other => return Err(fail(wrong_type("tags", "a list of strings", other))),
        };
        let channel = index_field(doc, "channel", "channel").map_err(&fail)?;
        let location = match field(doc, "location").map_err(&fail)? {
            loc @ Value::Object(_) => Location {
                time: index_field(loc, "Time", "location.Time").map_err(&fail)?,
                z: index_field(loc, "Z", "location.Z").map_err(&fail)?,
                xy: index_field(loc, "XY", "location.XY").map_err(&fail)?,
            },
            other => return Err(fail(wrong_type("location", "an object {XY, Z, Time}", other))),
        };
        let points = parse_points(field(doc, "coordinates").map_err(&fail)?).map_err(&fail)?;
        let points = match shape {
            Shape::Polygon if points.len() < 3 => {
                return Err(fail(AnnotationErrorKind::TooFewPoints(points.len())))
            }
            Shape::Polygon => points,
            Shape::Rectangle => normalise_rectangle(points).map_err(&fail)?,
        };
        Ok(Annotation { id, shape, points, tags, channel, location })
    }

    /// True when any of the annotation's tags is in `tags`.
    pub(crate) fn has_any_tag<S: AsRef<str>>(&self, tags: &[S]) -> bool {
        self.tags.iter().any(|t| tags.iter().any(|s| s.as_ref() == t))
    }
}

fn field<'a>(doc: &'a Value, name: &'static str) -> Result<&'a Value, AnnotationErrorKind> {
    doc.get(name).ok_or(AnnotationErrorKind::MissingField(name))
}

fn wrong_type(field: &str, expected: &'static str, found: &Value) -> AnnotationErrorKind {
    AnnotationErrorKind::WrongType { field: field.to_string(), expected, found: found.to_string() }
}

/// A non-negative integer that fits u32 (channel and location indices).
fn index_field(doc: &Value, name: &'static str, path: &str) -> Result<u32, AnnotationErrorKind> {
    let v = field(doc, name)?;
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| wrong_type(path, "a non-negative integer", v))
}

fn parse_points(coords: &Value) -> Result<Vec<(f64, f64)>, AnnotationErrorKind> {
    let Value::Array(items) = coords else {
        return Err(wrong_type("coordinates", "a list of {x, y} objects", coords));
    };
    let axis = |index: usize, p: &Value, axis: &'static str| -> Result<f64, AnnotationErrorKind> {
        let non_finite = |found: String| AnnotationErrorKind::NonFiniteCoordinate { index, axis, found };
        let v = match p.get(axis) {
            None => return Err(non_finite("missing".to_string())),
            Some(Value::Number(n)) => n.as_f64().ok_or_else(|| non_finite(n.to_string()))?,
            Some(Value::Null) => return Err(non_finite("null".to_string())),
            Some(other) => {
                return Err(wrong_type(&format!("coordinates[{index}].{axis}"), "a number", other))
            }
        };
        if !v.is_finite() {
            return Err(non_finite(v.to_string()));
        }
        if v.abs() > MAX_COORDINATE {
            return Err(AnnotationErrorKind::CoordinateOutOfRange { index, axis, value: v });
        }
        Ok(v)
    };
    items
        .iter()
        .enumerate()
        .map(|(i, p)| match p {
            Value::Object(_) => Ok((axis(i, p, "x")?, axis(i, p, "y")?)),
            other => Err(wrong_type(&format!("coordinates[{i}]"), "an {x, y} object", other)),
        })
        .collect()
}

/// 4 corners stay as they are; a 5-point closed ring drops its repeated last point (the closing
/// edge has zero length, so skimage.draw.polygon2mask gives the same mask either way).
fn normalise_rectangle(mut points: Vec<(f64, f64)>) -> Result<Vec<(f64, f64)>, AnnotationErrorKind> {
    match points.len() {
        4 => Ok(points),
        5 if points[4] == points[0] => {
            points.truncate(4);
            Ok(points)
        }
        5 => Err(AnnotationErrorKind::RectangleNotClosed(points[0].0, points[0].1, points[4].0, points[4].1)),
        n => Err(AnnotationErrorKind::RectanglePoints(n)),
    }
}

/// The trainable annotations of a listing, with points and lines skipped and counted.
#[derive(Debug, Clone, Default)]
pub struct ParsedAnnotations {
    /// Polygons and rectangles, in listing order.
    pub annotations: Vec<Annotation>,
    /// How many point and line annotations were skipped.
    pub skipped_untrainable: usize,
}

/// Parses a listing: points and lines are skipped and counted, any other problem is returned
/// (the first one, naming its annotation).
pub fn parse_trainable<'a>(
    docs: impl IntoIterator<Item = &'a Value>,
) -> Result<ParsedAnnotations, AnnotationError> {
    let mut out = ParsedAnnotations::default();
    for doc in docs {
        match Annotation::parse(doc) {
            Ok(a) => out.annotations.push(a),
            Err(e) if e.is_untrainable() => out.skipped_untrainable += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The annotations carrying any tag of `tags`, in input order (training annotations with the
/// training tags, region annotations with the region tags).
pub fn with_any_tag<'a, S: AsRef<str>>(annotations: &'a [Annotation], tags: &[S]) -> Vec<&'a Annotation> {
    annotations.iter().filter(|a| a.has_any_tag(tags)).collect()
}

/// Groups annotations by location (Time, Z, XY), keeping input order inside each group; works
/// for owned annotations and references alike. Order within a group is the label order when
/// rasterizing (later annotations overwrite earlier ones), so it must be the listing order.
pub fn group_by_location<A: Borrow<Annotation>>(
    annotations: impl IntoIterator<Item = A>,
) -> BTreeMap<Location, Vec<A>> {
    let mut groups: BTreeMap<Location, Vec<A>> = BTreeMap::new();
    for a in annotations {
        groups.entry(a.borrow().location).or_default().push(a);
    }
    groups
}

/// What one location contributes to training.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocationAnnotations<'a> {
    /// Annotations with a training tag, in listing order (label i+1 for the i-th).
    pub training: Vec<&'a Annotation>,
    /// Annotations with a region tag, in listing order. An annotation with both kinds of tag is
    /// in both lists, as in the reference worker (which fetches the two sets separately).
    pub regions: Vec<&'a Annotation>,
}

/// Splits annotations into training and region annotations per location (Time, Z, XY). Locations
/// with neither are absent.
pub fn split_by_location<'a, S: AsRef<str>, R: AsRef<str>>(
    annotations: &'a [Annotation],
    training_tags: &[S],
    region_tags: &[R],
) -> BTreeMap<Location, LocationAnnotations<'a>> {
    let mut groups: BTreeMap<Location, LocationAnnotations<'a>> = BTreeMap::new();
    for a in annotations {
        let (train, region) = (a.has_any_tag(training_tags), a.has_any_tag(region_tags));
        if !(train || region) {
            continue;
        }
        let g = groups.entry(a.location).or_default();
        if train {
            g.training.push(a);
        }
        if region {
            g.regions.push(a);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(shape: &str, coords: Value) -> Value {
        json!({"_id": "a1", "shape": shape, "coordinates": coords, "tags": ["cell"], "channel": 0,
               "location": {"XY": 2, "Z": 1, "Time": 3}, "datasetId": "d", "name": "", "color": null})
    }

    #[test]
    fn rectangle_closing_point_is_dropped() {
        let ring =
            json!([{"x": 1, "y": 2}, {"x": 5, "y": 2}, {"x": 5, "y": 6}, {"x": 1, "y": 6}, {"x": 1, "y": 2}]);
        let a = Annotation::parse(&doc("rectangle", ring)).unwrap();
        assert_eq!(a.points, vec![(1.0, 2.0), (5.0, 2.0), (5.0, 6.0), (1.0, 6.0)]);
        assert_eq!(a.location, Location { time: 3, z: 1, xy: 2 });
    }

    #[test]
    fn open_five_point_rectangle_is_rejected() {
        let ring =
            json!([{"x": 1, "y": 2}, {"x": 5, "y": 2}, {"x": 5, "y": 6}, {"x": 1, "y": 6}, {"x": 1, "y": 3}]);
        let e = Annotation::parse(&doc("rectangle", ring)).unwrap_err();
        assert!(matches!(e.kind, AnnotationErrorKind::RectangleNotClosed(..)), "{e}");
    }
}
