//! Annotation documents as a NimbusImage server returns them (recorded listing in
//! tests/fixtures/rasterize/nimbus_listing.json) and the ways a document can be unusable.

use cellpose_train_worker::annotations::{
    group_by_location, parse_trainable, split_by_location, with_any_tag, Annotation, AnnotationErrorKind,
    Location, Shape,
};
use serde_json::{json, Value};

use crate::helpers::fixture;

fn listing() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("rasterize/nimbus_listing.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn polygon(id: &str, tags: &[&str], loc: (u32, u32, u32)) -> Value {
    json!({"_id": id, "shape": "polygon", "tags": tags, "channel": 1,
           "location": {"Time": loc.0, "Z": loc.1, "XY": loc.2}, "datasetId": "d",
           "coordinates": [{"x": 1, "y": 1}, {"x": 5.5, "y": 1}, {"x": 3, "y": 4.25}]})
}

/// Parses `doc` after `edit`, expecting an error that names annotation `bad1`.
fn parse_error(edit: impl FnOnce(&mut Value)) -> AnnotationErrorKind {
    let mut doc = polygon("bad1", &["cell"], (0, 0, 0));
    edit(&mut doc);
    let e = Annotation::parse(&doc).expect_err("document should be rejected");
    assert_eq!(e.id, "bad1");
    assert!(e.to_string().starts_with("annotation bad1: "), "{e}");
    e.kind
}

#[test]
fn recorded_listing_parses_with_points_skipped() {
    let parsed = parse_trainable(&listing()).unwrap();
    assert_eq!(parsed.skipped_untrainable, 1);
    let ids: Vec<&str> = parsed.annotations.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["6b0324a094fa99a6a51d071c", "6b0324a094fa99a6a51d071f", "6b0324a094fa99a6a51d0720"]);
    let cell = &parsed.annotations[1];
    assert_eq!(cell.shape, Shape::Polygon);
    assert_eq!(cell.points, vec![(100.0, 100.0), (140.0, 100.0), (120.0, 150.0)]);
    assert_eq!(cell.tags, ["cell", "nucleus"]);
    assert_eq!(cell.channel, 1);
    let roi = &parsed.annotations[2];
    assert_eq!(roi.shape, Shape::Rectangle);
    assert_eq!(roi.points, vec![(5.0, 5.0), (60.0, 5.0), (60.0, 50.0), (5.0, 50.0)]);
}

#[test]
fn point_is_untrainable_not_malformed() {
    let docs = listing();
    let e = Annotation::parse(&docs[3]).unwrap_err();
    assert!(e.is_untrainable(), "{e}");
    assert!(e.to_string().contains("6b0324a094fa99a6a51d0721"), "{e}");
}

#[test]
fn malformed_documents_are_rejected_with_the_reason() {
    let k = parse_error(|d| {
        d.as_object_mut().unwrap().remove("channel");
    });
    assert!(matches!(k, AnnotationErrorKind::MissingField("channel")), "{k}");
    let k = parse_error(|d| {
        d.as_object_mut().unwrap().remove("location");
    });
    assert!(matches!(k, AnnotationErrorKind::MissingField("location")), "{k}");
    let k = parse_error(|d| d["coordinates"] = json!([{"x": 1, "y": 1}, {"x": 2, "y": 2}]));
    assert!(matches!(k, AnnotationErrorKind::TooFewPoints(2)), "{k}");
    let k = parse_error(|d| d["coordinates"][1]["y"] = Value::Null);
    assert!(matches!(k, AnnotationErrorKind::NonFiniteCoordinate { index: 1, axis: "y", .. }), "{k}");
    let k = parse_error(|d| {
        d["coordinates"][2].as_object_mut().unwrap().remove("x");
    });
    assert!(matches!(k, AnnotationErrorKind::NonFiniteCoordinate { index: 2, axis: "x", .. }), "{k}");
    let k = parse_error(|d| d["coordinates"][0]["x"] = json!(3e9));
    assert!(matches!(k, AnnotationErrorKind::CoordinateOutOfRange { index: 0, axis: "x", .. }), "{k}");
    let k = parse_error(|d| d["shape"] = json!("ellipse"));
    assert!(matches!(k, AnnotationErrorKind::UnknownShape(ref s) if s == "ellipse"), "{k}");
    let k = parse_error(|d| d["shape"] = json!("line"));
    assert!(matches!(k, AnnotationErrorKind::Untrainable(ref s) if s == "line"), "{k}");
    let k = parse_error(|d| d["channel"] = json!(-1));
    assert!(matches!(k, AnnotationErrorKind::WrongType { ref field, .. } if field == "channel"), "{k}");
    let k = parse_error(|d| d["location"]["Z"] = json!("0"));
    assert!(matches!(k, AnnotationErrorKind::WrongType { ref field, .. } if field == "location.Z"), "{k}");
    let k = parse_error(|d| d["tags"] = json!(["ok", 3]));
    assert!(matches!(k, AnnotationErrorKind::WrongType { ref field, .. } if field == "tags[1]"), "{k}");

    let missing_id = json!({"shape": "polygon"});
    let e = Annotation::parse(&missing_id).unwrap_err();
    assert!(matches!(e.kind, AnnotationErrorKind::MissingField("_id")) && e.id == "(no _id)", "{e}");
}

#[test]
fn rectangles_take_four_corners_or_a_closed_ring_of_five() {
    let rect = |coords: Value| {
        let mut d = polygon("r1", &["roi"], (0, 0, 0));
        d["shape"] = json!("rectangle");
        d["coordinates"] = coords;
        Annotation::parse(&d)
    };
    let corners = json!([{"x": 0.5, "y": 1}, {"x": 9, "y": 1}, {"x": 9, "y": 7.5}, {"x": 0.5, "y": 7.5}]);
    let four = rect(corners.clone()).unwrap();
    let mut ring = corners.as_array().unwrap().clone();
    ring.push(ring[0].clone());
    assert_eq!(rect(Value::Array(ring.clone())).unwrap().points, four.points);

    ring[4]["x"] = json!(0.6);
    assert!(matches!(
        rect(Value::Array(ring)).unwrap_err().kind,
        AnnotationErrorKind::RectangleNotClosed(..)
    ));
    let three = json!([{"x": 0, "y": 0}, {"x": 1, "y": 0}, {"x": 1, "y": 1}]);
    assert!(matches!(rect(three).unwrap_err().kind, AnnotationErrorKind::RectanglePoints(3)));
}

#[test]
fn tag_selection_and_grouping_keep_listing_order() {
    let docs = [
        polygon("p1", &["cell"], (1, 0, 0)),
        polygon("p2", &["roi"], (0, 2, 1)),
        polygon("p3", &["nucleus", "x"], (1, 0, 0)),
        polygon("p4", &["cell", "roi"], (0, 2, 1)),
        polygon("p5", &["other"], (0, 0, 0)),
        polygon("p6", &["cell"], (0, 2, 0)),
    ];
    let anns = parse_trainable(&docs).unwrap().annotations;
    let ids = |v: &[&Annotation]| v.iter().map(|a| a.id.clone()).collect::<Vec<_>>();

    let training = with_any_tag(&anns, &["cell", "nucleus"]);
    assert_eq!(ids(&training), ["p1", "p3", "p4", "p6"]);

    // Keys ordered by (Time, Z, XY); members in listing order.
    let groups = group_by_location(training.iter().copied());
    let keys: Vec<Location> = groups.keys().copied().collect();
    assert_eq!(
        keys,
        [
            Location { time: 0, z: 2, xy: 0 },
            Location { time: 0, z: 2, xy: 1 },
            Location { time: 1, z: 0, xy: 0 }
        ]
    );
    assert_eq!(ids(&groups[&Location { time: 1, z: 0, xy: 0 }]), ["p1", "p3"]);

    let split = split_by_location(&anns, &["cell"], &["roi"]);
    assert_eq!(split.len(), 3, "p5 has neither tag and its location is absent");
    let g = &split[&Location { time: 0, z: 2, xy: 1 }];
    assert_eq!(ids(&g.training), ["p4"]);
    assert_eq!(ids(&g.regions), ["p2", "p4"]);
}
