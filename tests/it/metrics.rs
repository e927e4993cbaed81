//! Golden tests of the AP metrics against Python cellpose 3.1.1.2 `metrics` (fixtures made by
//! tools/make_dynamics_fixtures.py).

use cellpose_train_worker::segment::{self, labels};
use ndarray::{Array2, Ix2};

use crate::helpers::fixture;
use crate::npy;

fn label_image(name: &str) -> Array2<u32> {
    npy::read_u32(&fixture(&format!("dynamics/{name}.npy"))).into_dimensionality::<Ix2>().expect("2-D labels")
}

/// The true and predicted label images of a metrics fixture pair.
fn pair(name: &str) -> (Array2<u32>, Array2<u32>) {
    match name.strip_prefix("segmented_") {
        Some(case) => {
            (label_image(&format!("masks_{case}_labels")), label_image(&format!("masks_{case}_cpu")))
        }
        None => (label_image(&format!("metrics_{name}_true")), label_image(&format!("metrics_{name}_pred"))),
    }
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("list").iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("dynamics/metrics.json")).expect("metrics.json");
    serde_json::from_str(&text).expect("valid json")
}

#[test]
fn average_precision_matches_cellpose() {
    let all = expected();
    let thresholds = floats(&all["thresholds"]);
    let pairs = all["pairs"].as_object().expect("pairs");
    assert!(pairs.len() >= 12, "fixture pairs missing");
    for (name, e) in pairs {
        let (t, p) = pair(name);
        let got = segment::average_precision_cellpose(t.view(), p.view(), &thresholds).expect("same shape");
        for (key, ours) in [("ap", &got.ap), ("tp", &got.tp), ("fp", &got.fp), ("fn", &got.fn_)] {
            let want = floats(&e[key]);
            for (k, (&o, &w)) in ours.iter().zip(&want).enumerate() {
                let same = (o.is_nan() && w.is_nan()) || (o as f64 - w).abs() <= 1e-6;
                assert!(same, "{name}: {key}[{}] = {o}, cellpose {w}", thresholds[k]);
            }
        }
        // the relabelled variant finds the same matches; only the object counts can differ
        let ours = segment::average_precision(t.view(), p.view(), &thresholds).expect("same shape");
        let n_true = labels::label_counts(t.view()).len() as u64;
        let n_pred = labels::label_counts(p.view()).len() as u64;
        for (c, &tp) in ours.iter().zip(&got.tp) {
            assert_eq!(c.tp as f32, tp, "{name}: tp at {}", c.threshold);
            assert_eq!((c.tp + c.fn_, c.tp + c.fp), (n_true, n_pred), "{name}: counts");
        }
    }
}

#[test]
fn relabelling_removes_the_gap_penalty() {
    let all = expected();
    let thresholds = floats(&all["thresholds"]);
    for name in ["gapped_true", "identical_permuted"] {
        let (t, p) = pair(name);
        let raw = segment::average_precision_cellpose(t.view(), p.view(), &thresholds).expect("same shape");
        let relabelled = segment::average_precision_cellpose(
            segment::relabel_consecutive(t.view()).view(),
            segment::relabel_consecutive(p.view()).view(),
            &thresholds,
        )
        .expect("same shape");
        let ours = segment::average_precision(t.view(), p.view(), &thresholds).expect("same shape");
        for (k, c) in ours.iter().enumerate() {
            assert!((c.average_precision() - relabelled.ap[k] as f64).abs() < 1e-6, "{name}");
        }
        // gaps make cellpose count phantom objects, so its AP is lower at the loosest threshold
        assert!(raw.ap[0] < relabelled.ap[0], "{name}: {} vs {}", raw.ap[0], relabelled.ap[0]);
    }
}

#[test]
fn mask_ious_and_aji_match_cellpose() {
    let all = expected();
    let mut checked = 0;
    for (name, e) in all["pairs"].as_object().expect("pairs") {
        if e.get("iout").is_none() {
            continue;
        }
        let (t, p) = pair(name);
        let (iout, preds) = segment::mask_ious(t.view(), p.view()).expect("same shape");
        let want_iou = floats(&e["iout"]);
        let want_pred: Vec<u64> =
            e["preds"].as_array().expect("list").iter().map(|v| v.as_u64().expect("int")).collect();
        assert_eq!(iout.len(), want_iou.len(), "{name}: one entry per true label");
        for (k, (&o, &w)) in iout.iter().zip(&want_iou).enumerate() {
            assert!((o - w).abs() <= 1e-12, "{name}: iou of true {} = {o}, cellpose {w}", k + 1);
            // cellpose also pairs objects without overlap (IoU 0); only real matches must agree
            if w > 0.0 {
                assert_eq!(preds[k] as u64, want_pred[k], "{name}: match of true {}", k + 1);
            }
        }
        let aji = segment::aggregated_jaccard_index(t.view(), p.view()).expect("same shape");
        let want = e["aji"].as_f64().expect("aji");
        assert!((aji - want).abs() <= 1e-12, "{name}: AJI {aji}, cellpose {want}");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} pairs had IoUs");
}

fn opt_floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("list").iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9
}

/// Precision, recall, F1 and panoptic quality of `evaluate::score_masks` (what `eval`, the
/// training report and the job report) against tools/qc_metrics_ref.py (cellpose's matching
/// counts, an independent numpy PQ) on every metrics fixture pair, and the mean over images.
#[test]
fn qc_metrics_match_the_reference_script() {
    use cellpose_train_worker::evaluate::{self, ApSummary, QcScores};

    let all = expected();
    let names: Vec<String> = all["pairs"].as_object().expect("pairs").keys().cloned().collect();
    let script = crate::helpers::repo_root().join("tools/qc_metrics_ref.py");
    let dir = fixture("dynamics");
    let mut args: Vec<String> = vec![script.display().to_string(), dir.display().to_string()];
    args.extend(names.iter().cloned());
    let out = std::process::Command::new(crate::helpers::python())
        .args(&args)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .expect("failed to start the reference Python (run scripts/setup.sh)");
    assert!(out.status.success(), "qc_metrics_ref.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");

    let mut scores = Vec::new();
    let mut ref_qc = Vec::new();
    for name in &names {
        let (t, p) = pair(name);
        let s = evaluate::score_masks(name, &t, &p).expect("same shape");
        let qc = s.qc();
        let r = &reference[name.as_str()];
        for (key, want) in [("tp", &s.tp), ("fp", &s.fp), ("fn", &s.fn_)] {
            let want_ref: Vec<u64> =
                r[key].as_array().expect("list").iter().map(|v| v.as_u64().expect("int")).collect();
            assert_eq!(want, &want_ref, "{name}: {key}");
        }
        let rq = QcScores {
            precision: opt_floats(&r["precision"]),
            recall: opt_floats(&r["recall"]),
            f1: opt_floats(&r["f1"]),
            pq: opt_floats(&r["pq"]),
        };
        for (key, ours, theirs) in [
            ("precision", &qc.precision, &rq.precision),
            ("recall", &qc.recall, &rq.recall),
            ("f1", &qc.f1, &rq.f1),
            ("pq", &qc.pq, &rq.pq),
        ] {
            for (k, (&o, &w)) in ours.iter().zip(theirs).enumerate() {
                assert!(close(o, w), "{name}: {key}[{}] = {o}, reference {w}", evaluate::THRESHOLDS[k]);
            }
        }
        scores.push(s);
        ref_qc.push(rq);
    }
    let summary = ApSummary::from_images(scores);
    let want_mean = QcScores::mean_of(&ref_qc);
    for k in 0..3 {
        assert!(close(summary.image_mean.pq[k], want_mean.pq[k]), "mean PQ");
        assert!(close(summary.image_mean.f1[k], want_mean.f1[k]), "mean F1");
    }
    // the fixtures cover both perfect and partial matches: PQ takes more than one value
    assert!(ref_qc.iter().any(|q| q.pq[0] == 1.0) && ref_qc.iter().any(|q| q.pq[0] > 0.0 && q.pq[0] < 1.0));
}
