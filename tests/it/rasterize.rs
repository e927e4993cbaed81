//! Label masks against scikit-image 0.26 `polygon2mask` as NimbusImage's "Cellpose retrain" worker
//! uses it (goldens from tools/make_rasterize_fixtures.py): every pixel must be identical.

use cellpose_train_worker::annotations::{Annotation, Shape};
use cellpose_train_worker::rasterize::{
    fill_polygon, rasterize_labels, rasterize_region, union_bbox, Label, RasterizeError, Region,
};
use ndarray::{s, Array2};
use serde_json::Value;

use crate::helpers::fixture;

fn load(name: &str) -> Value {
    let path = fixture(&format!("rasterize/{name}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn usize_at(v: &Value, i: usize) -> usize {
    v[i].as_u64().unwrap() as usize
}

/// Decodes the fixtures' flat [value, count, ...] run-length encoding of a row-major mask.
fn decode_rle(rle: &Value, shape: (usize, usize)) -> Array2<Label> {
    let flat: Vec<u64> = rle.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let mut out = Vec::with_capacity(shape.0 * shape.1);
    for pair in flat.chunks(2) {
        out.extend(std::iter::repeat_n(pair[0] as Label, pair[1] as usize));
    }
    Array2::from_shape_vec(shape, out).expect("RLE length equals the mask size")
}

/// Names the first differing pixels so a failure is readable.
fn assert_same(case: &str, ours: &Array2<Label>, expected: &Array2<Label>) {
    assert_eq!(ours.dim(), expected.dim(), "{case}: shape");
    let diffs: Vec<String> = ours
        .indexed_iter()
        .filter(|&(ix, v)| *v != expected[ix])
        .take(8)
        .map(|((r, c), v)| format!("(row {r}, col {c}): ours {v}, skimage {}", expected[[r, c]]))
        .collect();
    assert!(diffs.is_empty(), "{case}: pixels differ from polygon2mask: {}", diffs.join("; "));
}

#[test]
fn named_goldens_match_polygon2mask_pixel_for_pixel() {
    let goldens = load("goldens.json");
    let cases = goldens["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "fixture has {} cases", cases.len());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let frame = (usize_at(&case["frame"], 0), usize_at(&case["frame"], 1));
        let annotations: Vec<Annotation> = case["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| Annotation::parse(d).unwrap_or_else(|e| panic!("{name}: {e}")))
            .collect();
        let region = match &case["region"] {
            Value::Null => Region::full(frame),
            doc => {
                let r = Region::from_annotation(&Annotation::parse(doc).unwrap(), frame).unwrap();
                let e = &case["expected_region"];
                let expected =
                    Region { x0: usize_at(e, 0), y0: usize_at(e, 1), x1: usize_at(e, 2), y1: usize_at(e, 3) };
                assert_eq!(r, expected, "{name}: region crop");
                r
            }
        };
        let ours = rasterize_region(&region, &annotations).unwrap();
        assert_same(name, &ours, &decode_rle(&case["expected"], region.shape()));
    }
}

#[test]
fn random_polygons_match_polygon2mask_pixel_for_pixel() {
    let random = load("random.json");
    let cases = random["cases"].as_array().unwrap();
    assert!(cases.len() >= 300, "fixture has {} cases", cases.len());
    let mut drawn = 0usize;
    for (k, case) in cases.iter().enumerate() {
        let c = &case["crop"];
        let region =
            Region { x0: usize_at(c, 0), y0: usize_at(c, 1), x1: usize_at(c, 2), y1: usize_at(c, 3) };
        let mut ours = Array2::<Label>::zeros(region.shape());
        for (i, flat) in case["polygons"].as_array().unwrap().iter().enumerate() {
            let xy: Vec<f64> = flat.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let points: Vec<(f64, f64)> = xy.chunks(2).map(|p| (p[0], p[1])).collect();
            fill_polygon(&mut ours.view_mut(), region.offset(), &points, i as Label + 1);
        }
        drawn += ours.iter().filter(|&&v| v != 0).count();
        assert_same(&format!("random case {k}"), &ours, &decode_rle(&case["expected"], region.shape()));
    }
    // Guards against a fixture of empty masks, where agreement would prove nothing.
    assert!(drawn > 10_000, "only {drawn} labelled pixels across the random cases");
}

fn annotation(id: &str, points: &[(f64, f64)]) -> Annotation {
    Annotation {
        id: id.into(),
        shape: Shape::Polygon,
        points: points.to_vec(),
        tags: vec!["cell".into()],
        channel: 0,
        location: Default::default(),
    }
}

#[test]
fn crop_rasterization_equals_the_full_frame_mask_sliced() {
    let anns = [
        annotation("a", &[(3.2, 4.1), (40.5, 7.7), (33.0, 38.9), (6.6, 30.2)]),
        annotation("b", &[(20.0, 20.0), (58.5, 22.5), (50.0, 61.0)]),
        annotation("c", &[(45.5, 2.5), (63.0, 10.0), (47.0, 16.0)]),
    ];
    let full = rasterize_labels((64, 64), &anns, (0, 0)).unwrap();
    let crop = Region { x0: 10, y0: 15, x1: 55, y1: 50 };
    let ours = rasterize_region(&crop, &anns).unwrap();
    assert_eq!(ours, full.slice(s![15..50, 10..55]));
    // All three labels are present in the full mask, so the comparison covers overwrites.
    for label in 1..=3 {
        assert!(full.iter().any(|&v| v == label), "label {label} missing");
    }
}

#[test]
fn union_bbox_covers_every_region_and_slices_back_to_each() {
    let a = Region { x0: 10, y0: 5, x1: 30, y1: 25 };
    let b = Region { x0: 22, y0: 1, x1: 40, y1: 12 };
    let u = union_bbox([a, b]).unwrap();
    assert_eq!(u, Region { x0: 10, y0: 1, x1: 40, y1: 25 });
    assert_eq!(union_bbox(Vec::<Region>::new()), None);

    let anns = [annotation("a", &[(12.0, 3.0), (38.0, 6.0), (25.0, 24.0)])];
    let union_mask = rasterize_region(&u, &anns).unwrap();
    for r in [a, b] {
        let (rows, cols) = u.sub_ranges(&r).unwrap();
        assert_eq!(union_mask.slice(s![rows, cols]), rasterize_region(&r, &anns).unwrap());
    }
    assert_eq!(a.sub_ranges(&b), None);
}

#[test]
fn pixel_budget_rejects_large_regions_by_name() {
    let r = Region { x0: 0, y0: 0, x1: 1000, y1: 2000 };
    assert!(r.check_budget("reg1", 2_000_000).is_ok());
    let e = r.check_budget("reg1", 1_999_999).unwrap_err();
    assert!(matches!(e, RasterizeError::RegionTooLarge { pixels: 2_000_000, .. }));
    let msg = e.to_string();
    assert!(msg.contains("reg1") && msg.contains("smaller regions"), "{msg}");
}

#[test]
fn empty_region_names_the_annotation() {
    let mut region = annotation("thin", &[(5.2, 3.0), (5.9, 3.0), (5.9, 20.0), (5.2, 20.0)]);
    region.shape = Shape::Rectangle;
    // int(5.2) == int(5.9): no whole column.
    let e = Region::from_annotation(&region, (64, 64)).unwrap_err();
    assert!(e.to_string().contains("region annotation thin"), "{e}");
    // Entirely right of the frame: clipped to nothing.
    let far = annotation("far", &[(70.0, 1.0), (80.0, 1.0), (80.0, 9.0)]);
    assert!(matches!(Region::from_annotation(&far, (64, 64)), Err(RasterizeError::EmptyRegion { .. })));
}
