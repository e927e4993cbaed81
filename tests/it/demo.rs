//! The README's first command, `demo`, on the same code path with a few epochs: mock Girder,
//! seeded dataset, a job through the queue, model and report copied out.

use super::helpers::{bin, run_python, tempdir};

#[test]
fn demo_runs_a_job_through_the_queue_and_hands_out_a_model_python_cellpose_loads() {
    let dir = tempdir();
    let out = dir.path().join("demo-output");
    let run = bin()
        .args(["demo", "--epochs", "3", "--bsize", "64", "--device", "cpu", "--out"])
        .arg(&out)
        .env("OMP_NUM_THREADS", "2")
        .output()
        .expect("start demo");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "demo failed:\n{stdout}\n{stderr}");

    // the story a user reads: seeded, submitted, trained, finished, where things are
    for needle in
        ["Mock Girder listening at http://127.0.0.1:", "Seeded dataset", "Submitted job", "finished SUCCESS"]
    {
        assert!(stdout.contains(needle), "`{needle}` missing from:\n{stdout}");
    }
    let progress: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
    // the demo polls the job twice a second, so which epochs it catches depends on the machine
    assert!(
        progress.iter().any(|l| l.contains("Epoch ") && l.contains("/3: loss")),
        "no per-epoch progress: {progress:?}"
    );
    assert!(progress.last().is_some_and(|l| l.starts_with("[100.0%]")), "{progress:?}");
    for key in ["Validation region, base model:", "Validation region, trained model:"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no `{key}` line:\n{stdout}"));
        let ap50: f64 =
            line.split_whitespace().nth(5).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"));
        assert!((0.0..=1.0).contains(&ap50), "{line}");
    }

    let model = out.join("demo-model");
    let report = out.join("demo-model-report");
    for f in ["report.png", "report.json", "metrics.jsonl", "overlay.png"] {
        let p = report.join(f);
        assert!(p.metadata().map(|m| m.len() > 0).unwrap_or(false), "{} missing or empty", p.display());
    }
    // the overlay: the demo's validation crop, base and trained model side by side
    let overlay = image::open(report.join("overlay.png")).expect("overlay.png is a PNG").to_rgb8();
    assert!(overlay.width() >= 2 * 256 && overlay.height() >= 256, "{:?}", overlay.dimensions());
    let orange = overlay.pixels().filter(|p| p.0 == [230, 159, 0]).count();
    assert!(orange > 50, "annotated outlines drawn: {orange} orange pixels");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["epochs"], serde_json::json!(3));
    assert_eq!(json["train_losses"].as_array().map(Vec::len), Some(3));

    let code = r#"
import sys, numpy as np
from cellpose import models
m = models.CellposeModel(gpu=False, pretrained_model=sys.argv[1])
img = np.random.default_rng(0).random((2, 64, 64)).astype("float32")
masks, flows, styles = m.eval(img, channels=[1, 2], diameter=30)
print("ok", masks.shape, m.diam_mean, m.diam_labels)
"#;
    let py = run_python(code, &[model.to_str().unwrap()]);
    assert!(py.starts_with("ok (64, 64)"), "{py}");
}
