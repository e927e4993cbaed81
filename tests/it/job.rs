//! The training job end to end against the in-process mock Girder: `compute` and `interface`
//! through NimbusImage's one-shot container contract (the binary) and safe model replacement
//! under upload faults. The fixture here is shared with `job_inputs` (the bad inputs).

use std::process::Output;

use bytes::Bytes;
use cellpose_train_worker::config::Settings;
use cellpose_train_worker::control::Control;
use cellpose_train_worker::demo::seed::{interface_values, seed, DemoSpec, DemoWorld};
use cellpose_train_worker::girder::Secret;
use cellpose_train_worker::girder::{GirderClient, ObjectId};
use cellpose_train_worker::job::{
    run_job, store, Events, JobContext, JobError, JobEvent, JobOutcome, JobRequest, Request,
};
use cellpose_train_worker::mock_girder::{spawn_mock, MockConfig, MockHandle};
use cellpose_train_worker::tool::Tool;
use serde_json::{json, Value};

use super::girder_seed::{clear_requests, config, fault, requests};
use super::helpers::{bin, run_python, tempdir};

/// A small base network: jobs that never reach Python train in a second.
pub(super) const TINY: [i64; 4] = [8, 16, 32, 64];
/// cellpose's CPnet widths: what `CellposeModel(pretrained_model=..)` builds and loads into.
const FULL: [i64; 4] = [32, 64, 128, 256];
pub(super) const BASE: &str = "tiny-base";

pub(super) struct Fixture {
    pub(super) mock: MockHandle,
    pub(super) world: DemoWorld,
    /// Empty: no built-in models are needed (the base model is the user's own).
    pub(super) models_dir: tempfile::TempDir,
}

pub(super) async fn fixture(size: usize, cells: usize, nbase: &[i64]) -> Fixture {
    let mock = spawn_mock(MockConfig::default()).await.unwrap();
    let spec = DemoSpec { size, cells, seed: 5, base_nbase: nbase.to_vec(), base_model_name: BASE.into() };
    let world = seed(config(&mock), &spec).await.unwrap();
    Fixture { mock, world, models_dir: tempdir() }
}

/// One item as the tests compare them: (item id, name, [(file id, file name, size)]).
pub(super) type ItemSnapshot = (String, String, Vec<(String, String, u64)>);

impl Fixture {
    /// Settings for 2 CPU cores: 32-pixel patches, epochs from 1.
    pub(super) fn settings(&self) -> Settings {
        let mut s = Settings::default();
        s.training.device = "cpu".parse().unwrap();
        s.training.bsize = 32;
        s.training.min_epochs = 1;
        s.training.checkpoint_every = 1000;
        s.paths.models_dir = Some(self.models_dir.path().to_path_buf());
        s
    }

    pub(super) async fn run(&self, values: Value) -> (Result<JobOutcome, JobError>, Vec<JobEvent>) {
        self.run_as(&self.world.user, &self.world.dataset_id, values, self.settings()).await
    }

    pub(super) async fn run_as(
        &self,
        client: &GirderClient,
        dataset_id: &str,
        values: Value,
        settings: Settings,
    ) -> (Result<JobOutcome, JobError>, Vec<JobEvent>) {
        self.run_controlled(client, dataset_id, values, settings, &Control::new()).await
    }

    /// [`Fixture::run_as`] under `control` (tests that stop the job).
    pub(super) async fn run_controlled(
        &self,
        client: &GirderClient,
        dataset_id: &str,
        values: Value,
        settings: Settings,
        control: &Control,
    ) -> (Result<JobOutcome, JobError>, Vec<JobEvent>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ctx = JobContext {
            client: client.clone(),
            user: None,
            settings,
            device: tch::Device::Cpu,
            job_tag: "jobtest".into(),
            resume: None,
            seed: 1,
        };
        let request = JobRequest {
            request: Request::Compute,
            dataset_id: Some(ObjectId::parse("dataset", dataset_id).unwrap()),
            token: Secret::new("unused: the client carries the token"),
            image: None,
            values,
            tool: Tool::Cellpose,
        };
        let result = run_job(&ctx, &request, &Events::new(tx), control).await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (result, events)
    }

    /// The items (and their files) of `Private/.cellpose/<sub>`, uploads in progress included.
    pub(super) async fn folder(&self, sub: &str) -> Vec<ItemSnapshot> {
        let user = &self.world.user;
        let folder = store::cellpose_folder(user, &self.world.user_id, &[sub]).await.unwrap();
        let mut out = Vec::new();
        for item in user.items().list(&folder.id).await.unwrap() {
            let files = user.items().files(&item.id).await.unwrap();
            out.push((item.id, item.name, files.into_iter().map(|f| (f.id, f.name, f.size)).collect()));
        }
        out
    }

    /// The one file of model item `name` (asserting exactly one item and one file of that name).
    pub(super) async fn model(&self, name: &str) -> (ItemSnapshot, Bytes) {
        let items: Vec<ItemSnapshot> =
            self.folder("models").await.into_iter().filter(|i| i.1 == name).collect();
        assert_eq!(items.len(), 1, "model {name}: want exactly one item, got {items:?}");
        let item = items.into_iter().next().unwrap();
        assert_eq!(item.2.len(), 1, "model {name}: want exactly one file, got {:?}", item.2);
        assert_eq!(item.2[0].1, name, "the file is named as the model");
        let bytes = self.world.user.files().download(&item.2[0].0).await.unwrap();
        (item, bytes)
    }

    /// Runs a job that must fail before anything is written: returns the error after checking
    /// that `message + info` contains every needle, that the models folder is unchanged, and that
    /// no file, item or annotation was created, changed or deleted (creating the `.cellpose`
    /// folders is allowed) and, with `no_download`, that no file was downloaded.
    pub(super) async fn refused(
        &self,
        case: &str,
        run: impl std::future::Future<Output = (Result<JobOutcome, JobError>, Vec<JobEvent>)>,
        needles: &[&str],
        no_download: bool,
    ) -> JobError {
        let before = self.folder("models").await;
        clear_requests(&self.mock).await;
        let (result, _) = run.await;
        let err = match result {
            Ok(o) => panic!("{case}: the job succeeded ({o:?})"),
            Err(e) => e,
        };
        let text = format!("{err} | {}", err.info());
        for n in needles {
            assert!(text.contains(n), "{case}: `{n}` missing from: {text}");
        }
        let log = requests(&self.mock).await;
        let writes: Vec<_> =
            log.iter().filter(|(m, p, _)| m != "GET" && !(m == "POST" && p.ends_with("/folder"))).collect();
        assert!(writes.is_empty(), "{case}: the failed job wrote to Girder: {writes:?}");
        if no_download {
            let downloads: Vec<_> = log.iter().filter(|(_, p, _)| p.ends_with("/download")).collect();
            assert!(downloads.is_empty(), "{case}: downloaded before validating: {downloads:?}");
        }
        assert_eq!(self.folder("models").await, before, "{case}: the models folder changed");
        err
    }

    /// Adds annotations to the dataset; returns their ids.
    pub(super) async fn annotate(&self, docs: &[Value]) -> Vec<String> {
        let created = self.world.user.annotations().create_many(docs).await.unwrap();
        created.iter().map(|d| d["_id"].as_str().unwrap().to_string()).collect()
    }

    pub(super) fn doc(&self, shape: &str, tag: &str, xy: u32, points: &[(f64, f64)]) -> Value {
        let coords: Vec<Value> = points.iter().map(|&(x, y)| json!({"x": x, "y": y, "z": 0})).collect();
        json!({
            "tags": [tag], "shape": shape, "channel": 0, "location": {"XY": xy, "Z": 0, "Time": 0},
            "coordinates": coords, "datasetId": self.world.dataset_id, "name": "", "color": null
        })
    }
}

/// `values` with `key` set (or removed when `v` is `None`).
pub(super) fn with(values: &Value, key: &str, v: Option<Value>) -> Value {
    let mut out = values.clone();
    match v {
        Some(v) => out[key] = v,
        None => {
            out.as_object_mut().unwrap().remove(key);
        }
    }
    out
}

/// Runs the binary in NimbusImage's one-shot mode (off the async runtime: the mock serves from it).
pub(super) async fn oneshot(
    f: &Fixture,
    token: &str,
    request: &str,
    params: Value,
    env: &[(&str, &str)],
) -> Output {
    let cfg = f.models_dir.path().join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    let mut cmd = bin();
    cmd.args(["--apiUrl", &f.mock.api_url, "--token", token, "--request", request])
        .args(["--parameters", &params.to_string(), "--datasetId", &f.world.dataset_id])
        .arg("--config")
        .arg(&cfg)
        .env("CPW_TRAINING__DEVICE", "cpu")
        .env("CPW_TRAINING__BSIZE", "32")
        .env("CPW_PATHS__MODELS_DIR", f.models_dir.path())
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

/// Every stdout line is one of NimbusImage's JSON messages; returns them parsed.
pub(super) fn json_lines(out: &Output) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"));
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            let shape_ok = if l.starts_with(r#"{"progress": "#) {
                keys.len() == 3 && v["title"].is_string() && v["info"].is_string()
            } else if l.starts_with(r#"{"warning": "#) {
                keys.len() == 4 && v["title"] == "Warning" && v["type"] == "warning" && v["info"].is_string()
            } else if l.starts_with(r#"{"error": "#) {
                keys.len() == 4 && v["title"] == "Error" && v["type"] == "error" && v["info"].is_string()
            } else {
                false
            };
            assert!(shape_ok, "not a NimbusImage progress/warning/error line: {l}");
            v
        })
        .collect()
}

pub(super) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Checks the progress lines of a successful `epochs`-epoch compute, in order.
fn assert_progress_sequence(lines: &[Value], epochs: usize, name: &str) {
    let progress: Vec<(f64, String, String)> = lines
        .iter()
        .filter(|v| v.get("progress").is_some())
        .map(|v| {
            (
                v["progress"].as_f64().unwrap(),
                v["title"].as_str().unwrap().into(),
                v["info"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut want: Vec<(f64, &str)> = vec![
        (0.1, "Loading annotations"),
        (0.2, "Processing annotations"),
        (0.3, "Loading training data"),
        // the fixture has a validation region: the base model is scored before training
        (0.35, "Scoring base model"),
        (0.4, "Training model"),
    ];
    for e in 1..=epochs {
        want.push(((0.4 + 0.55 * e as f64 / epochs as f64).min(0.95), "Training model"));
    }
    want.extend([(0.95, "Saving model"), (1.0, "Done")]);
    let got: Vec<(f64, &str)> = progress.iter().map(|(p, t, _)| (*p, t.as_str())).collect();
    assert_eq!(got.len(), want.len(), "progress sequence: {progress:?}");
    // never down, not even by a rounding error (0.4 + 0.55 * n / n is 0.9500000000000001)
    assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "progress went down: {got:?}");
    for ((p, t), (wp, wt)) in got.iter().zip(&want) {
        assert!((p - wp).abs() < 1e-9 && t == wt, "got {got:?}, want {want:?}");
    }
    assert_eq!(progress[0].2, "Retrieving annotations from server");
    assert_eq!(progress[3].2, format!("Scoring {BASE} on the validation regions"));
    assert!(
        progress[4].2.starts_with("Training with ") && progress[4].2.ends_with("be patient..."),
        "{:?}",
        progress[4]
    );
    for (e, (_, _, info)) in progress[5..5 + epochs].iter().enumerate() {
        let prefix = format!("Epoch {}/{epochs}: loss ", e + 1);
        let rest = info.strip_prefix(&prefix).unwrap_or_else(|| panic!("epoch message: {info}"));
        let (loss, eta) = rest.split_once(", ETA ").unwrap_or_else(|| panic!("no ETA: {info}"));
        assert!(loss.parse::<f64>().is_ok_and(f64::is_finite), "loss in {info}");
        assert!(eta.ends_with('s') || eta.ends_with('m'), "ETA in {info}");
    }
    assert_eq!(progress[progress.len() - 2].2, format!("Uploading model {name}"));
    let done = &progress[progress.len() - 1].2;
    assert!(done.starts_with(&format!("Model {name} saved to your .cellpose/models folder.")), "{done}");
}

#[tokio::test]
async fn compute_trains_uploads_a_cellpose_model_and_a_second_run_replaces_it() {
    let f = fixture(128, 14, &FULL).await;
    let token = f.world.user_token.expose().to_string();
    let params = |epochs| json!({"workerInterface": interface_values(BASE, "job-model", epochs)});
    let (_, base_bytes) = f.model(BASE).await;

    // every epoch scored on the validation region: the best one is uploaded
    let env = [("CPW_TRAINING__MIN_EPOCHS", "1"), ("CPW_TRAINING__EVAL_EVERY", "1")];
    let out = oneshot(&f, &token, "compute", params(2), &env).await;
    assert!(
        out.status.success(),
        "compute failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let lines = json_lines(&out);
    assert_progress_sequence(&lines, 2, "job-model");
    let done = lines.last().unwrap()["info"].as_str().unwrap().to_string();
    assert!(
        done.contains("Validation AP@0.5: ") && done.contains(" before, ") && done.contains(" after"),
        "{done}"
    );
    assert!(stderr(&out).contains("job done"), "logs go to stderr: {}", stderr(&out));

    // the model: one item holding one file of that name, which Python cellpose loads and runs
    let (first, bytes) = f.model("job-model").await;
    assert_ne!(bytes, base_bytes, "the uploaded model is the trained one, not the base");
    assert_eq!(
        f.world.user.items().download(&first.0).await.unwrap(),
        bytes,
        "the item downloads as its one file"
    );
    let dir = tempdir();
    let path = dir.path().join("job-model");
    std::fs::write(&path, &bytes).unwrap();
    let py = run_python(
        r#"
import sys, numpy as np
from cellpose import models
m = models.CellposeModel(pretrained_model=sys.argv[1], gpu=False)
img = np.random.RandomState(0).rand(2, 64, 64).astype('float32')
masks = m.eval(img, channels=[1, 2], channel_axis=0, diameter=30.)[0]
print('ok', masks.shape, round(float(m.net.diam_mean.item()), 1))
"#,
        &[path.to_str().unwrap()],
    );
    assert_eq!(py.trim(), "ok (64, 64) 30.0");

    // the report: its own item under reports/, never in the model item
    let reports = f.folder("reports").await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].1.starts_with("job-model report "), "{}", reports[0].1);
    let mut names: Vec<&str> = reports[0].2.iter().map(|f| f.1.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["job-model.bioimageio.zip", "metrics.jsonl", "overlay.png", "qc.csv", "report.json", "report.png"]
    );
    let file = |n: &str| reports[0].2.iter().find(|f| f.1 == n).unwrap().0.clone();
    // the overlay: base and trained model side by side, the annotated outlines drawn in both
    let overlay = f.world.user.files().download(&file("overlay.png")).await.unwrap();
    let overlay = image::load_from_memory(&overlay).expect("overlay.png is a PNG").to_rgb8();
    let orange = overlay.pixels().filter(|p| p.0 == [230, 159, 0]).count();
    assert!(overlay.width() >= 2 * 256 && orange > 50, "{:?}, {orange} orange pixels", overlay.dimensions());
    // the BioImage.IO package: its weights are the uploaded model file itself
    let zip = f.world.user.files().download(&file("job-model.bioimageio.zip")).await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip.to_vec())).unwrap();
    let mut weights = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("weights.pt").unwrap(), &mut weights).unwrap();
    assert!(weights == bytes, "the package's weights.pt is not the uploaded model");
    let mut rdf = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("rdf.yaml").unwrap(), &mut rdf).unwrap();
    assert!(rdf.contains("pytorch_state_dict") && rdf.contains("weights.pt"), "{rdf}");
    let report: Value =
        serde_json::from_slice(&f.world.user.files().download(&file("report.json")).await.unwrap()).unwrap();
    // Keep best model (on by default): both epochs scored, the uploaded weights are the best's
    // (ties: the later epoch), and the after-score, taken on the uploaded weights, is that score
    let scored: Vec<(u64, f64)> = report["scored_epochs"]
        .as_array()
        .unwrap_or_else(|| panic!("no scored_epochs in {report}"))
        .iter()
        .map(|s| (s["epoch"].as_u64().unwrap(), s["ap50"].as_f64().unwrap()))
        .collect();
    assert_eq!(scored.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2], "{report}");
    let best = scored.iter().fold(scored[0], |b, s| if s.1 >= b.1 { *s } else { b });
    assert_eq!(report["kept_epoch"].as_u64(), Some(best.0), "{report}");
    assert_eq!(report["ap_after"]["ap"][0].as_f64(), Some(best.1), "{report}");
    if best.0 != 2 {
        assert!(done.contains(&format!("the best-scoring epoch, {} of 2", best.0)), "{done}");
    }
    let qc =
        String::from_utf8(f.world.user.files().download(&file("qc.csv")).await.unwrap().to_vec()).unwrap();
    assert!(qc.lines().count() >= 2 && qc.contains("f1") && qc.contains("pq"), "{qc}");
    assert_eq!(report["train_losses"].as_array().map(Vec::len), Some(2), "{report}");
    // the precision training ran in is named, as `auto` decides it on this CPU
    let auto = cellpose_train_worker::precision::resolve(
        cellpose_train_worker::config::Toggle::Auto,
        tch::Device::Cpu,
        cellpose_train_worker::model::ModelFamily::Cpnet,
    );
    assert_eq!(report["precision"].as_str(), Some(auto.label()), "{report}");
    assert!(report["n_validation"].as_u64() >= Some(1), "{report}");
    for k in ["ap_before", "ap_after"] {
        assert_eq!(report[k]["ap"].as_array().map(Vec::len), Some(3), "{k} in {report}");
    }
    let png = f.world.user.files().download(&file("report.png")).await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "report.png is a PNG");
    // metrics.jsonl: each epoch line carries the epoch's wall seconds, the total adds them up
    let jsonl = f.world.user.files().download(&file("metrics.jsonl")).await.unwrap();
    let epochs: Vec<Value> = std::str::from_utf8(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["stage"] == "train")
        .collect();
    assert_eq!(epochs.len(), 2, "{jsonl:?}");
    assert!(epochs.iter().all(|e| e["precision"] == report["precision"]), "{jsonl:?}");
    let mut total = 0.0;
    for e in &epochs {
        let took = e["epoch_seconds"].as_f64().unwrap_or(0.0);
        assert!(took > 0.0 && took < 300.0, "implausible epoch time: {e}");
        total += took;
        assert!((e["seconds"].as_f64().unwrap() - total).abs() < 1e-9, "{e}");
    }

    // the same Output Model Name again: replaced, still one item with one file
    let out = oneshot(&f, &token, "compute", params(1), &env).await;
    assert!(out.status.success(), "second compute failed:\n{}", stderr(&out));
    assert_progress_sequence(&json_lines(&out), 1, "job-model");
    let (second, bytes2) = f.model("job-model").await;
    assert_ne!(second.2[0].0, first.2[0].0, "a new file");
    assert_ne!(bytes2, bytes, "the new model's weights");
    let models = f.folder("models").await;
    let mut names: Vec<&str> = models.iter().map(|i| i.1.as_str()).collect();
    names.sort();
    assert_eq!(names, ["job-model", BASE], "no leftovers of the replaced model or of the upload");
    assert_eq!(f.folder("reports").await.len(), 2, "one report per run");
}

#[tokio::test]
async fn interface_posts_the_fields_with_ranges_and_the_users_models_sorted() {
    let f = fixture(64, 4, &TINY).await;
    let user = &f.world.user;
    let (_, base_bytes) = f.model(BASE).await;
    store::upload_model(user, &f.world.user_id, "alpha cells", base_bytes.clone(), "t").await.unwrap();
    let models = store::cellpose_folder(user, &f.world.user_id, &["models"]).await.unwrap();
    user.items().create(&models.id, "zeta.uploading-123", None).await.unwrap();
    let token = f.world.user_token.expose().to_string();
    let image = "nimbusimage/cellpose-train-worker:latest";
    clear_requests(&f.mock).await;

    let out = oneshot(&f, &token, "interface", json!({"image": image}), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let log: Vec<Value> =
        reqwest::get(format!("{}/mock/requests", f.mock.base_url)).await.unwrap().json().await.unwrap();
    let posts: Vec<&Value> =
        log.iter().filter(|r| r["method"] == "POST" && r["path"] == "/api/v1/worker_interface").collect();
    assert_eq!(posts.len(), 1, "{log:?}");
    assert!(posts[0]["query"].to_string().contains("image"), "{}", posts[0]);

    let doc = user.worker_interfaces().get(image).await.unwrap().expect("interface stored for the image");
    let mut keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "Base Model",
            "Cellpose train",
            "Epochs",
            "Keep best model",
            "Learning Rate",
            "Nuclear Model?",
            "Output Model Name",
            "Primary Channel",
            "Secondary Channel",
            "Training Region",
            "Training Tag",
            "Validation Region",
            "Weight Decay"
        ]
    );
    let base = &doc["Base Model"];
    assert_eq!(base["type"], "select");
    assert_eq!(base["default"], "cyto3");
    // no built-in weights in the models folder: only the user's models are offered
    assert_eq!(base["items"], json!(["alpha cells", BASE]));
    let num = |k: &str| {
        (doc[k]["type"].clone(), doc[k]["min"].clone(), doc[k]["max"].clone(), doc[k]["default"].clone())
    };
    assert_eq!(num("Learning Rate"), (json!("number"), json!(0.0001), json!(0.5), json!(0.01)));
    assert_eq!(num("Epochs"), (json!("number"), json!(100), json!(2000), json!(1000)));
    assert_eq!(num("Weight Decay"), (json!("number"), json!(0.0), json!(0.01), json!(0.0001)));
    assert_eq!(
        (&doc["Primary Channel"]["type"], &doc["Primary Channel"]["required"]),
        (&json!("channel"), &json!(true))
    );
    assert_eq!(
        (&doc["Secondary Channel"]["default"], &doc["Secondary Channel"]["required"]),
        (&json!(-1), &json!(false))
    );
    assert_eq!(doc["Training Tag"]["required"], true);
    assert_eq!(doc["Training Region"]["required"], false);
    assert_eq!(doc["Validation Region"]["type"], "tags");
    assert_eq!(doc["Nuclear Model?"]["default"], false);
    assert_eq!(doc["Output Model Name"]["type"], "text");
    for (k, v) in doc.as_object().unwrap() {
        assert!(
            k == "Cellpose train" || v["tooltip"].as_str().is_some_and(|t| !t.is_empty()),
            "{k} has no tooltip"
        );
    }

    // a deployment's widened epoch range is what the interface offers; an installed built-in
    // (cellpose's file name: cyto2 is cyto2torch_0) is offered too
    std::fs::write(f.models_dir.path().join("cyto2torch_0"), &base_bytes).unwrap();
    let env = [("CPW_TRAINING__MIN_EPOCHS", "10"), ("CPW_TRAINING__MAX_EPOCHS", "5000")];
    let out = oneshot(&f, &token, "interface", json!({"image": image}), &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = user.worker_interfaces().get(image).await.unwrap().unwrap();
    assert_eq!((&doc["Epochs"]["min"], &doc["Epochs"]["max"]), (&json!(10), &json!(5000)));
    assert_eq!(doc["Base Model"]["items"], json!(["alpha cells", "cyto2", BASE]));
}

#[tokio::test]
async fn a_failed_upload_leaves_the_old_model_as_it_was() {
    let f = fixture(96, 10, &TINY).await;
    let user = &f.world.user;
    let (_, old_bytes) = f.model(BASE).await;
    store::upload_model(user, &f.world.user_id, "keep-me", old_bytes.clone(), "prep").await.unwrap();
    let (old_item, _) = f.model("keep-me").await;
    let values = interface_values(BASE, "keep-me", 1);
    let before = f.folder("models").await;

    // every chunk of the new file fails (5xx, retried until the retry budget is spent)
    fault(&f.mock, json!({"method": "POST", "path": "^/api/v1/file/chunk$", "count": 100, "status": 500}))
        .await;
    let work = tempfile::tempdir().unwrap();
    let mut settings = f.settings();
    settings.paths.work_dir = Some(work.path().to_path_buf());
    let (result, _) = f.run_as(user, &f.world.dataset_id, values.clone(), settings.clone()).await;
    let err = result.expect_err("the upload was meant to fail");
    let JobError::ModelKept { source, kept } = &err else { panic!("{err:?}") };
    assert!(matches!(**source, JobError::Upload(_)), "{err:?}");
    assert!(err.to_string().starts_with("Uploading the model failed"), "{err}");
    // the training is not lost: the model waits on the worker, and the message says where
    assert!(err.to_string().contains(&kept.display().to_string()), "{err}");
    assert_eq!(kept, &work.path().join("jobtest").join("keep-me"));
    let sd = cellpose_train_worker::model::torch_file::read_state_dict_bytes(
        &std::fs::read(kept).unwrap(),
        "kept",
    )
    .unwrap();
    assert!(sd.get("output.2.weight").is_some());
    assert_eq!(f.folder("models").await, before, "the old model (and nothing else) is left");
    assert_eq!(f.model("keep-me").await.1, old_bytes, "same bytes");

    // the upload's first request is lost (connection dropped; a POST is not retried)
    reqwest::Client::new().delete(format!("{}/mock/faults", f.mock.base_url)).send().await.unwrap();
    fault(&f.mock, json!({"method": "POST", "path": "^/api/v1/file$", "count": 1, "drop": true})).await;
    let (result, _) = f.run_as(user, &f.world.dataset_id, values.clone(), settings.clone()).await;
    assert!(
        matches!(&result, Err(JobError::ModelKept { source, .. }) if matches!(**source, JobError::Upload(_))),
        "{result:?}"
    );
    assert_eq!(f.folder("models").await, before);
    assert_eq!(f.model("keep-me").await.1, old_bytes);

    // Girder healthy again: the model is replaced, one item, one file; no local copy is left
    let (result, _) = f.run_as(user, &f.world.dataset_id, values, settings).await;
    let outcome = result.unwrap();
    assert!(!work.path().join("jobtest").exists(), "the local copy outlived a good upload");
    let (new_item, new_bytes) = f.model("keep-me").await;
    assert_eq!(new_item.0, outcome.model_item_id);
    assert_ne!(new_item.0, old_item.0);
    assert_ne!(new_bytes, old_bytes);
    assert_eq!(f.folder("models").await.len(), before.len(), "replaced, not added");
}
