//! `segment` and `eval` through the CLI against Python cellpose 3.1.1.2, and the training
//! report (`train --test-dir --log-dir`): metrics.jsonl, TensorBoard events, report PNG.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cellpose_train_worker::evaluate::{score_masks, THRESHOLDS};
use cellpose_train_worker::imageio::{read_labels, write_image_u16, write_labels_tiff};
use cellpose_train_worker::synthetic::{write_folder, SynthSpec};
use serde_json::Value;

use crate::helpers::{bin, run_python_env, tempdir};

/// Cells of radius 8-12 (diameter ~20) in 96x96 two-channel images.
fn spec(seed: u64) -> SynthSpec {
    SynthSpec { height: 96, width: 96, n_cells: 10, radius: (8.0, 12.0), seed }
}

/// Runs Python single-threaded: two processes sharing 2 cores with spinning OpenMP threads are
/// ten times slower than one thread each.
fn py(code: &str, args: &[&Path]) -> String {
    run_python_env(code, args, &[("OMP_NUM_THREADS", "1")])
}

/// Trains a small CPnet with cellpose's own `train.train_seg` (SGD, lr 0.1, 60 epochs of 4
/// images), then segments each test image with `CellposeModel.eval` at diameter 20 and the
/// default thresholds, saving `<py>/<base>_masks.tif`. cellpose's `run_net` sizes the style
/// vector as 256, so the last level keeps 256 channels. Prints the mask counts.
const PY_TRAIN_AND_EVAL: &str = r#"
import sys, glob, os, numpy as np, torch, tifffile
torch.set_num_threads(1); torch.manual_seed(0); np.random.seed(0)
from cellpose import models, train
from cellpose.resnet_torch import CPnet
root, out = sys.argv[1], sys.argv[2]
def images(d): return sorted(f for f in glob.glob(d + '/img_*.tif') if not f.endswith('_masks.tif'))
files = images(root + '/train')
imgs = [tifffile.imread(f) for f in files]
labs = [tifffile.imread(f[:-4] + '_masks.tif') for f in files]
nbase = [2, 8, 16, 32, 256]
net = CPnet(nbase, 3, 3, mkldnn=False, max_pool=True, diam_mean=30.)
path, _, _ = train.train_seg(net, train_data=imgs, train_labels=labs, channels=[1, 2], normalize=True,
    learning_rate=0.1, n_epochs=60, SGD=True, batch_size=4, bsize=64, min_train_masks=1,
    save_path=root, model_name='py_model')
m = models.CellposeModel(gpu=False, nchan=2)
m.net = CPnet(nbase, 3, 3, mkldnn=m.mkldnn, max_pool=True, diam_mean=30.)
m.net.load_model(str(path), device=m.device)
m.diam_mean = m.net.diam_mean.item(); m.diam_labels = m.net.diam_labels.item()
os.makedirs(out, exist_ok=True)
for f in images(root + '/test'):
    masks, _, _ = m.eval(tifffile.imread(f), channels=[1, 2], diameter=20., flow_threshold=0.4,
                         cellprob_threshold=0.0)
    tifffile.imwrite(out + '/' + os.path.basename(f)[:-4] + '_masks.tif', masks.astype(np.uint16))
    print(os.path.basename(f), int(masks.max()))
print('model', path)
"#;

/// A Python-trained model shared by the tests of this file (trained once per test run).
struct PyModel {
    root: PathBuf,
    model: PathBuf,
    /// (test image file name, number of masks Python cellpose found).
    counts: Vec<(String, u32)>,
}

fn py_model() -> &'static PyModel {
    static MODEL: OnceLock<PyModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("segment_cli");
        let _ = std::fs::remove_dir_all(&root);
        write_folder(&root.join("train"), 4, &spec(1)).unwrap();
        write_folder(&root.join("test"), 2, &spec(100)).unwrap();
        let t0 = std::time::Instant::now();
        let out = py(PY_TRAIN_AND_EVAL, &[&root, &root.join("py")]);
        eprintln!("python cellpose: trained and evaluated in {:.1}s", t0.elapsed().as_secs_f64());
        let mut counts = Vec::new();
        let mut model = None;
        for line in out.lines() {
            match line.split_once(' ') {
                Some(("model", p)) => model = Some(PathBuf::from(p.trim())),
                Some((name, n)) if name.ends_with(".tif") => {
                    counts.push((name.to_string(), n.trim().parse().unwrap()))
                }
                _ => {}
            }
        }
        PyModel { root, model: model.expect("python printed the model path"), counts }
    })
}

/// The flags both sides use: channels [1, 2], diameter 20, cellpose's default thresholds.
const SEG_FLAGS: [&str; 13] = [
    "--chan",
    "1",
    "--chan2",
    "2",
    "--diameter",
    "20",
    "--flow-threshold",
    "0.4",
    "--cellprob-threshold",
    "0.0",
    "--min-size",
    "15",
    "--device",
];

/// Runs the binary single-threaded too (see [`py`]); results do not depend on it.
fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.env("OMP_NUM_THREADS", "1").output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

fn segment(model: &Path, dir: &Path, out: &Path) -> String {
    let t0 = std::time::Instant::now();
    let (_, stderr) = run_ok(
        bin()
            .arg("segment")
            .args(SEG_FLAGS)
            .arg("cpu")
            .arg("--model")
            .arg(model)
            .arg("--dir")
            .arg(dir)
            .arg("--out")
            .arg(out),
    );
    eprintln!("segment: {:.1}s", t0.elapsed().as_secs_f64());
    stderr
}

#[test]
fn segment_matches_python_cellpose_on_a_model_trained_by_cellpose() {
    let m = py_model();
    let total: u32 = m.counts.iter().map(|c| c.1).sum();
    assert_eq!(m.counts.len(), 2, "{:?}", m.counts);
    // 10 synthetic cells per image: the comparison means nothing if cellpose found few
    assert!(m.counts.iter().all(|c| c.1 >= 6), "python cellpose found too few masks: {:?}", m.counts);

    let dir = tempdir();
    let stderr = segment(&m.model, &m.root.join("test"), dir.path());
    assert!(stderr.contains("segmented 2 image(s)"), "{stderr}");
    let mut ours_total = 0;
    for (name, n_py) in &m.counts {
        let base = name.trim_end_matches(".tif");
        let python = read_labels(&m.root.join("py").join(format!("{base}_masks.tif"))).unwrap();
        let ours = read_labels(&dir.path().join(format!("{base}_masks.tif"))).unwrap();
        let s = score_masks(name, &python, &ours).unwrap();
        eprintln!("{name}: python {n_py} masks, ours {}; AP vs python {:?}", s.n_pred, s.ap);
        assert_eq!(s.n_true as u32, *n_py);
        assert!(s.ap[0] >= 0.95, "{name}: AP@0.5 of ours against python cellpose's masks is {:.3}", s.ap[0]);
        ours_total += s.n_pred;
    }
    assert!(ours_total as u32 >= total - 1, "ours {ours_total}, python {total}");
}

fn eval_json(model: &Path, dir: &Path) -> Value {
    let (stdout, _) = run_ok(
        bin()
            .arg("eval")
            .args(SEG_FLAGS)
            .arg("cpu")
            .arg("--json")
            .arg("--model")
            .arg(model)
            .arg("--dir")
            .arg(dir),
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("eval --json is not JSON ({e}): {stdout}"))
}

#[test]
fn eval_json_is_the_mean_of_per_image_ap_recomputable_from_segment_masks() {
    let m = py_model();
    let test = m.root.join("test");
    let v = eval_json(&m.model, &test);
    let per_image = v["per_image"].as_array().unwrap();
    assert_eq!(per_image.len(), 2);
    assert_eq!(v["n_images"], 2);
    let keys: Vec<String> = THRESHOLDS.iter().map(|t| format!("{t}")).collect();
    assert_eq!(keys, ["0.5", "0.75", "0.9"]);
    for k in &keys {
        let mean = per_image.iter().map(|p| p["ap"][k].as_f64().unwrap()).sum::<f64>() / 2.0;
        assert!((v["ap"][k].as_f64().unwrap() - mean).abs() < 1e-12, "ap[{k}] is not the mean: {v}");
    }
    // the model learnt something: the comparison is not 0 == 0
    assert!(v["ap"]["0.5"].as_f64().unwrap() > 0.5, "{v}");

    // the same numbers from the masks `segment` writes, scored with the library
    let out = tempdir();
    segment(&m.model, &test, out.path());
    for p in per_image {
        let name = p["name"].as_str().unwrap();
        let base = name.trim_end_matches(".tif");
        let truth = read_labels(&test.join(format!("{base}_masks.tif"))).unwrap();
        let pred = read_labels(&out.path().join(format!("{base}_masks.tif"))).unwrap();
        let s = score_masks(name, &truth, &pred).unwrap();
        assert_eq!(p["n_true"], s.n_true as u64);
        assert_eq!(p["n_pred"], s.n_pred as u64);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(p["ap"][k].as_f64().unwrap(), s.ap[i], "{name} ap[{k}]");
            assert_eq!(p["tp"][k], s.tp[i]);
            assert_eq!(p["fp"][k], s.fp[i]);
            assert_eq!(p["fn"][k], s.fn_[i]);
        }
    }

    // gaps in the ground-truth labels (1, 4, 7, ...) do not change the scores
    let gapped = tempdir();
    for p in per_image {
        let base = p["name"].as_str().unwrap().trim_end_matches(".tif");
        std::fs::copy(test.join(format!("{base}.tif")), gapped.path().join(format!("{base}.tif"))).unwrap();
        let mut labels = read_labels(&test.join(format!("{base}_masks.tif"))).unwrap();
        labels.mapv_inplace(|l| if l > 0 { 3 * l - 2 } else { 0 });
        write_labels_tiff(&gapped.path().join(format!("{base}_masks.tif")), labels.view()).unwrap();
    }
    let g = eval_json(&m.model, gapped.path());
    assert_eq!(g["ap"], v["ap"]);
    assert_eq!(g["n_true"], v["n_true"]);

    // the table: a row per image and the mean
    let (table, _) = run_ok(
        bin().arg("eval").args(SEG_FLAGS).arg("cpu").arg("--model").arg(&m.model).arg("--dir").arg(&test),
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].contains("AP@0.5") && lines[0].contains("AP@0.9"), "{table}");
    assert!(lines[1].starts_with("img_000.tif") && lines[3].starts_with("mean (2 images)"), "{table}");
    assert!(lines[3].contains(&format!("{:.3}", v["ap"]["0.5"].as_f64().unwrap())), "{table}");

    // --overlay: a picture per image, annotated (orange) and predicted (sky blue) outlines
    let pictures = tempdir();
    let overlay_dir = pictures.path().join("overlays");
    run_ok(
        bin()
            .arg("eval")
            .args(SEG_FLAGS)
            .arg("cpu")
            .arg("--model")
            .arg(&m.model)
            .arg("--dir")
            .arg(&test)
            .arg("--overlay")
            .arg(&overlay_dir),
    );
    for p in per_image {
        let base = p["name"].as_str().unwrap().trim_end_matches(".tif");
        let path = overlay_dir.join(format!("{base}_overlay.png"));
        let png = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
        let truth = read_labels(&test.join(format!("{base}_masks.tif"))).unwrap();
        let (h, w) = truth.dim();
        assert!(
            png.width() as usize >= w && png.height() as usize >= h,
            "{:?} for {w}x{h}",
            png.dimensions()
        );
        let count = |rgb: [u8; 3]| png.pixels().filter(|px| px.0 == rgb).count();
        let (orange, blue) = (count([230, 159, 0]), count([86, 180, 233]));
        // every predicted cell has an outline (a few pixels per cell at least), drawn over the
        // annotated ones where both fall on a pixel; the annotated outlines show beside them
        assert!(blue >= 4 * p["n_pred"].as_u64().unwrap() as usize, "{base}: {blue} blue pixels");
        assert!(orange > 0, "{base}: no annotated outline drawn");
    }
}

/// Reads the TensorBoard file with TensorBoard's own reader and prints `tag count steps`.
const PY_TENSORBOARD: &str = r#"
import sys, glob
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
files = glob.glob(sys.argv[1] + '/events.out.tfevents.*')
assert len(files) == 1, files
acc = EventAccumulator(files[0]); acc.Reload()
for tag in sorted(acc.Tags()['scalars']):
    ev = acc.Scalars(tag)
    print(tag, len(ev), ','.join(str(e.step) for e in ev))
import torch
sd = torch.load(sys.argv[2], weights_only=True, map_location='cpu')
print('state_dict', type(sd).__name__, len(sd))
"#;

#[test]
fn train_with_a_test_dir_writes_metrics_tensorboard_and_a_report() {
    let dir = tempdir();
    let d = dir.path();
    write_folder(&d.join("data"), 3, &spec(1)).unwrap();
    write_folder(&d.join("test"), 2, &spec(50)).unwrap();
    let t0 = std::time::Instant::now();
    let (_, stderr) = run_ok(
        bin()
            .current_dir(d)
            .args(["train", "--dir", "data", "--test-dir", "test", "--log-dir", "logs", "--eval-every", "2"])
            .args(["--pretrained-model", "None", "--nbase", "8,16,32", "--chan", "1", "--chan2", "2"])
            .args(["--n-epochs", "6", "--batch-size", "2", "--bsize", "64", "--min-train-masks", "1"])
            .args([
                "--model-name",
                "mine",
                "--device",
                "cpu",
                "--seed",
                "1",
                "--SGD",
                "--learning-rate",
                "0.05",
            ])
            .args(["--summary-json", "summary.json"]),
    );
    eprintln!("train: {:.1}s", t0.elapsed().as_secs_f64());
    assert!(stderr.contains("AP before training") && stderr.contains("AP after training"), "{stderr}");

    let model = d.join("data/models/mine");
    let text = std::fs::read_to_string(d.join("data/models/mine.metrics.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 8, "before, 6 epochs, after:\n{text}");
    let stage = |v: &Value| v["stage"].as_str().unwrap().to_string();
    assert_eq!((stage(&lines[0]), lines[0]["epoch"].as_u64()), ("before".into(), Some(0)));
    assert_eq!((stage(&lines[7]), lines[7]["epoch"].as_u64()), ("after".into(), Some(6)));
    for (i, l) in lines[1..7].iter().enumerate() {
        assert_eq!(stage(l), "train");
        assert_eq!(l["epoch"].as_u64(), Some(i as u64 + 1));
        assert!(l["train_loss"].as_f64().unwrap() > 0.0 && l["lr"].is_f64() && l["seconds"].is_f64(), "{l}");
        // AP after epochs 2 and 4 (--eval-every 2; the last epoch is the `after` line)
        assert_eq!(l.get("ap").is_some(), i == 1 || i == 3, "{l}");
        // cellpose's test loss: 0-based epochs 0 and 5
        assert_eq!(l["test_loss"].is_f64(), i == 0 || i == 5, "{l}");
    }
    for l in [&lines[0], &lines[2], &lines[4], &lines[7]] {
        for k in ["0.5", "0.75", "0.9"] {
            let ap = l["ap"][k].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&ap), "{l}");
        }
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["ap_after"]["ap"][0], lines[7]["ap"]["0.5"]);
    assert_eq!(summary["ap_before"]["n_images"], 2);

    let tb = py(PY_TENSORBOARD, &[&d.join("logs"), &model]);
    let tags: Vec<&str> = tb.lines().collect();
    assert_eq!(
        tags[..12],
        [
            "ap/iou_0.5 4 0,2,4,6",
            "ap/iou_0.75 4 0,2,4,6",
            "ap/iou_0.9 4 0,2,4,6",
            "f1/iou_0.5 4 0,2,4,6",
            "f1/iou_0.75 4 0,2,4,6",
            "f1/iou_0.9 4 0,2,4,6",
            "loss/test 2 1,6",
            "loss/train 6 1,2,3,4,5,6",
            "lr 6 1,2,3,4,5,6",
            "pq/iou_0.5 4 0,2,4,6",
            "pq/iou_0.75 4 0,2,4,6",
            "pq/iou_0.9 4 0,2,4,6",
        ],
        "{tb}"
    );
    // the model file is still a plain state_dict
    assert!(
        tags[12].starts_with("state_dict OrderedDict") || tags[12].starts_with("state_dict dict"),
        "{tb}"
    );

    let png = image::open(d.join("data/models/mine.report.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1500, 450));
    // something was drawn besides the white background
    let rgb = png.to_rgb8();
    let coloured = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(coloured > 10_000, "{coloured} non-white pixels");

    // the overlay of the test images: base and trained model side by side, named in summary.json
    let overlay = d.join("data/models/mine.overlay.png");
    assert!(
        summary["overlay"].as_str().is_some_and(|p| p.ends_with("data/models/mine.overlay.png")),
        "{summary}"
    );
    let png = image::open(&overlay).unwrap().to_rgb8();
    assert!(png.width() >= 2 * 256, "two columns: {:?}", png.dimensions());
    let count = |rgb: [u8; 3]| png.pixels().filter(|p| p.0 == rgb).count();
    let (orange, blue) = (count([230, 159, 0]), count([86, 180, 233]));
    // this short run's model finds no cell yet: the annotated outlines are drawn (and the misses
    // filled), a predicted outline only where there is a prediction
    let n_pred = summary["ap_after"]["n_pred"].as_u64().unwrap() as usize;
    assert!(
        orange > 100 && blue >= 4 * n_pred,
        "{orange} orange, {blue} blue pixels for {n_pred} predictions"
    );
}

#[test]
fn segment_skips_its_own_outputs_and_errors_name_the_file() {
    let dir = tempdir();
    let d = dir.path();
    let model = d.join("m.pth");
    run_ok(bin().args(["model", "init", "--nbase", "8,16", "--out"]).arg(&model));
    let fail = |args: &[&str], extra: &[&Path]| {
        let out =
            bin().args(args).args(extra).args(["--device", "cpu", "--model"]).arg(&model).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // a folder walked twice: masks and flows written next to the image are not segmented again
    let imgs = d.join("imgs");
    write_folder(&imgs, 1, &SynthSpec { height: 48, width: 48, n_cells: 3, ..spec(3) }).unwrap();
    std::fs::remove_file(imgs.join("img_000_masks.tif")).unwrap();
    for _ in 0..2 {
        let (_, stderr) = run_ok(
            bin()
                .args(["segment", "--save-flows", "--device", "cpu", "--model"])
                .arg(&model)
                .arg("--dir")
                .arg(&imgs),
        );
        assert!(stderr.contains("segmented 1 image(s)"), "{stderr}");
    }
    assert!(imgs.join("img_000_masks.tif").is_file() && imgs.join("img_000_flows.tif").is_file());
    let flows = cellpose_train_worker::imageio::read_image(&imgs.join("img_000_flows.tif")).unwrap();
    assert_eq!(flows.dim(), (3, 48, 48));

    // a missing image
    let e = fail(&["segment", "--image"], &[&d.join("missing.tif")]);
    assert!(e.contains("missing.tif") && e.contains("cannot open"), "{e}");
    // an unreadable image in a folder
    std::fs::create_dir(d.join("bad")).unwrap();
    std::fs::write(d.join("bad/broken.tif"), b"II*\0garbage").unwrap();
    let e = fail(&["segment", "--dir"], &[&d.join("bad")]);
    assert!(e.contains("broken.tif") && e.contains("unreadable"), "{e}");
    // eval: an image without ground truth
    std::fs::create_dir(d.join("gt")).unwrap();
    let (img, labels) =
        cellpose_train_worker::synthetic::synth_image(&SynthSpec { height: 48, width: 48, ..spec(4) });
    write_image_u16(&d.join("gt/a.tif"), &img).unwrap();
    write_labels_tiff(&d.join("gt/a_masks.tif"), labels.view()).unwrap();
    write_image_u16(&d.join("gt/b.tif"), &img).unwrap();
    let e = fail(&["eval", "--dir"], &[&d.join("gt")]);
    assert!(e.contains("b.tif") && e.contains("no mask found") && e.contains("b_masks.tif"), "{e}");
    // ground truth next to an image is never replaced unasked (the walk above replaced only
    // masks that `segment` itself had written)
    let truth = std::fs::read(d.join("gt/a_masks.tif")).unwrap();
    let e = fail(&["segment", "--image"], &[&d.join("gt/a.tif")]);
    assert!(
        e.contains("a_masks.tif") && e.contains("not written by `segment`") && e.contains("--out"),
        "{e}"
    );
    assert_eq!(std::fs::read(d.join("gt/a_masks.tif")).unwrap(), truth, "ground truth changed");
    run_ok(
        bin()
            .args(["segment", "--overwrite", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--image")
            .arg(d.join("gt/a.tif")),
    );
    assert_ne!(std::fs::read(d.join("gt/a_masks.tif")).unwrap(), truth);
    // neither --dir nor --image
    let e = fail(&["segment"], &[]);
    assert!(e.contains("--dir") && e.contains("--image"), "{e}");
}
