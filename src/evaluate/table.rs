//! How `eval` shows an [`ApSummary`]: a fixed-width table for people and a JSON document for
//! scripts. Every per-threshold value is keyed by the IoU threshold ("0.5", "0.75", "0.9").

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{ApSummary, QcScores};

fn by_threshold<T: Copy + Into<Value>>(thresholds: &[f64], values: &[T]) -> BTreeMap<String, Value> {
    thresholds.iter().zip(values).map(|(t, v)| (format!("{t}"), (*v).into())).collect()
}

/// `{"ap": {"0.5": ..}, "precision", "recall", "f1", "pq", "image_mean": {"precision", "recall",
/// "f1", "pq"}, "n_images", "n_true", "n_pred", "thresholds", "model", "per_image": [{"name",
/// "n_true", "n_pred", "ap", "tp", "fp", "fn", "precision", "recall", "f1", "pq"}]}`.
/// The top-level AP is the mean over images of cellpose's per-image AP; precision, recall, F1
/// and PQ (panoptic quality) come from the counts summed over images, `image_mean` holds the
/// mean over images of the per-image values. Undefined values (no objects at all) are null.
pub fn summary_json(summary: &ApSummary, model: &str) -> Value {
    let th = &summary.thresholds;
    let per_image: Vec<Value> = summary
        .per_image
        .iter()
        .map(|s| {
            let qc = s.qc();
            json!({
                "name": s.name,
                "n_true": s.n_true,
                "n_pred": s.n_pred,
                "ap": by_threshold(th, &s.ap),
                "tp": by_threshold(th, &s.tp),
                "fp": by_threshold(th, &s.fp),
                "fn": by_threshold(th, &s.fn_),
                "precision": by_threshold(th, &qc.precision),
                "recall": by_threshold(th, &qc.recall),
                "f1": by_threshold(th, &qc.f1),
                "pq": by_threshold(th, &qc.pq),
            })
        })
        .collect();
    json!({
        "model": model,
        "thresholds": th,
        "ap": by_threshold(th, &summary.ap),
        "precision": by_threshold(th, &summary.precision),
        "recall": by_threshold(th, &summary.recall),
        "f1": by_threshold(th, &summary.f1),
        "pq": by_threshold(th, &summary.pq),
        "image_mean": qc_json(th, &summary.image_mean),
        "n_images": summary.n_images,
        "n_true": summary.n_true,
        "n_pred": summary.n_pred,
        "per_image": per_image,
    })
}

/// `{"precision": {"0.5": ..}, "recall", "f1", "pq"}`.
pub(crate) fn qc_json(thresholds: &[f64], qc: &QcScores) -> Value {
    json!({
        "precision": by_threshold(thresholds, &qc.precision),
        "recall": by_threshold(thresholds, &qc.recall),
        "f1": by_threshold(thresholds, &qc.f1),
        "pq": by_threshold(thresholds, &qc.pq),
    })
}

/// One row per image (n_true, n_pred, AP at each threshold, F1 and PQ at the first), then the
/// mean over images.
pub fn summary_table(summary: &ApSummary) -> String {
    let mean = format!("mean ({} images)", summary.n_images);
    let name_w =
        summary.per_image.iter().map(|s| s.name.len()).chain([mean.len()]).max().unwrap_or(0).min(60);
    let mut out = format!("{:<name_w$}  {:>6}  {:>6}", "image", "n_true", "n_pred");
    for t in &summary.thresholds {
        out.push_str(&format!("  {:>8}", format!("AP@{t}")));
    }
    let t0 = summary.thresholds.first().copied().unwrap_or(0.5);
    out.push_str(&format!("  {:>8}  {:>8}", format!("F1@{t0}"), format!("PQ@{t0}")));
    out.push('\n');
    let row = |out: &mut String, name: &str, nt: usize, np: usize, ap: &[f64], f1: f64, pq: f64| {
        out.push_str(&format!("{name:<name_w$}  {nt:>6}  {np:>6}"));
        for a in ap.iter().chain([&f1, &pq]) {
            out.push_str(&format!("  {a:>8.3}"));
        }
        out.push('\n');
    };
    let first = |v: &[f64]| v.first().copied().unwrap_or(f64::NAN);
    for s in &summary.per_image {
        let qc = s.qc();
        row(&mut out, &s.name, s.n_true, s.n_pred, &s.ap, first(&qc.f1), first(&qc.pq));
    }
    let m = &summary.image_mean;
    row(&mut out, &mean, summary.n_true, summary.n_pred, &summary.ap, first(&m.f1), first(&m.pq));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::ImageScore;

    fn score(name: &str, ap: [f64; 3]) -> ImageScore {
        ImageScore {
            name: name.into(),
            n_true: 4,
            n_pred: 3,
            ap: ap.to_vec(),
            tp: vec![3, 2, 1],
            fp: vec![0, 1, 2],
            fn_: vec![1, 2, 3],
            iou_sum: vec![2.4, 1.6, 0.9],
        }
    }

    #[test]
    fn json_ap_is_the_mean_of_per_image_ap_keyed_by_threshold() {
        let s =
            ApSummary::from_images(vec![score("a.tif", [0.75, 0.4, 0.2]), score("b.tif", [0.25, 0.2, 0.0])]);
        let v = summary_json(&s, "m");
        assert_eq!(v["ap"]["0.5"], 0.5);
        assert!((v["ap"]["0.75"].as_f64().unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(v["per_image"][1]["ap"]["0.9"], 0.0);
        assert_eq!(v["per_image"][0]["fn"]["0.75"], 2);
        assert_eq!(v["n_true"], 8);
        // PQ per image at 0.5: 2.4 / (3 + 0.5); pooled: 4.8 / (6 + 1)
        assert!((v["per_image"][0]["pq"]["0.5"].as_f64().unwrap() - 2.4 / 3.5).abs() < 1e-12);
        assert!((v["pq"]["0.5"].as_f64().unwrap() - 4.8 / 7.0).abs() < 1e-12);
        assert_eq!(v["per_image"][0]["precision"]["0.75"], 2.0 / 3.0);
        assert!((v["image_mean"]["f1"]["0.5"].as_f64().unwrap() - 6.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn table_has_a_row_per_image_and_the_mean() {
        let s =
            ApSummary::from_images(vec![score("a.tif", [0.75, 0.4, 0.2]), score("b.tif", [0.25, 0.2, 0.0])]);
        let t = summary_table(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].contains("AP@0.75") && lines[1].starts_with("a.tif"), "{t}");
        assert!(lines[3].starts_with("mean (2 images)") && lines[3].contains("0.500"), "{t}");
        // F1@0.5 of each image: 6/7; PQ@0.5: 2.4 / 3.5
        assert!(lines[0].ends_with("F1@0.5    PQ@0.5") && lines[1].ends_with("0.857     0.686"), "{t}");
    }
}
