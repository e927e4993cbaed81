//! The "Cellpose-SAM retrain" job end to end against the in-process mock Girder: a one-shot
//! `compute` (told from the CPnet tool by its fields) fine-tunes a tiny cpsam base stored as the
//! user's model and uploads a model that cellpose 4.2.1.1 loads, segments with, and scores with a
//! lower loss on the training crops; `interface` for a Cellpose-SAM image posts that tool's
//! fields; bad fields are refused before any download.

use bytes::Bytes;
use cellpose_train_worker::control::Control;
use cellpose_train_worker::demo::seed::{CELL_TAG, REGION_TAG, VALIDATION_TAG};
use cellpose_train_worker::girder::{GirderClient, Secret};
use cellpose_train_worker::job::events::Checkpoint;
use cellpose_train_worker::job::family::cpsam::SLOTS;
use cellpose_train_worker::job::{
    dataset, run_job, store, Cpsam, Events, Facts, JobContext, JobError, JobEvent, JobOutcome, JobRequest,
    Request,
};
use cellpose_train_worker::tool::Tool;
use serde_json::{json, Value};

use crate::cpsam_train::{run_train_ref, write_raw};
use crate::helpers::{fixture as fixture_file, run_cp4_tool, tempdir};
use crate::job::{fixture, json_lines, oneshot, stderr, Fixture, TINY};

pub(crate) const ROOT: &str = ".cellposesam";
const SAM_BASE: &str = "tiny sam";

/// The values a user would submit: both demo channels in slots 1 and 2.
fn values(output: &str, epochs: usize) -> Value {
    values_for(SAM_BASE, output, epochs)
}

/// [`values`] with another base model.
pub(crate) fn values_for(base: &str, output: &str, epochs: usize) -> Value {
    json!({
        "Base Model": base,
        "Output Model Name": output,
        "Channel for Slot 1": {"0": true},
        "Channel for Slot 2": {"1": true},
        "Channel for Slot 3": {},
        "Training Tag": [CELL_TAG],
        "Training Region": [REGION_TAG],
        "Validation Region": [VALIDATION_TAG],
        "Learning Rate": 0.001,
        "Epochs": epochs,
        "Weight Decay": 0.1
    })
}

/// The demo world with the tiny cpsam file stored as the user's model in `.cellposesam/models`.
async fn sam_fixture() -> Fixture {
    let f = fixture(128, 14, &TINY).await;
    let bytes = Bytes::from(std::fs::read(fixture_file("cpsam/tiny.pth")).unwrap());
    store::upload_model_in(&f.world.user, &f.world.user_id, ROOT, SAM_BASE, bytes, "seed").await.unwrap();
    f
}

/// Items of `Private/.cellposesam/models`: (name, [(file id, file name)]).
async fn sam_models(f: &Fixture) -> Vec<(String, Vec<(String, String)>)> {
    let user = &f.world.user;
    let folder = store::family_folder(user, &f.world.user_id, ROOT, &["models"]).await.unwrap();
    let mut out = Vec::new();
    for item in user.items().list(&folder.id).await.unwrap() {
        let files = user.items().files(&item.id).await.unwrap();
        out.push((item.name, files.into_iter().map(|f| (f.id, f.name)).collect()));
    }
    out.sort();
    out
}

/// Runs the Cellpose-SAM job in-process.
async fn run_sam(f: &Fixture, client: &GirderClient, values: Value) -> Result<JobOutcome, JobError> {
    run_sam_with(f, client, values, f.settings(), None).await.0
}

/// [`run_sam`] with `settings`, a checkpoint to resume from; also returns the job's events and
/// checkpoints.
async fn run_sam_with(
    f: &Fixture,
    client: &GirderClient,
    values: Value,
    settings: cellpose_train_worker::config::Settings,
    resume: Option<Bytes>,
) -> (Result<JobOutcome, JobError>, Vec<JobEvent>, Vec<Checkpoint>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // stored as a worker's pump stores them: read while the job runs (the channel is bounded)
    let (checkpoint_tx, mut checkpoint_rx) = tokio::sync::mpsc::channel(1);
    let checkpoints = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(c) = checkpoint_rx.recv().await {
            kept.push(c);
        }
        kept
    });
    let ctx = JobContext {
        client: client.clone(),
        user: None,
        settings,
        device: tch::Device::Cpu,
        job_tag: "samtest".into(),
        resume,
        seed: 1,
    };
    let request = JobRequest {
        request: Request::Compute,
        dataset_id: Some(
            cellpose_train_worker::girder::ObjectId::parse("dataset", &f.world.dataset_id).unwrap(),
        ),
        token: Secret::new("unused: the client carries the token"),
        image: None,
        values,
        tool: Tool::CellposeSam,
    };
    let events = Events::new(tx).with_checkpoints(checkpoint_tx);
    let result = run_job(&ctx, &request, &events, &Control::new()).await;
    drop(events);
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (result, events, checkpoints.await.unwrap())
}

/// A cpsam job checkpoints every `cpsam_checkpoint_every` epochs (not after the last: the model
/// itself is uploaded then); a job resumed from one of them uploads the very model an
/// uninterrupted job does; a CPnet checkpoint is refused before training and uploads nothing.
#[tokio::test]
async fn a_cpsam_job_checkpoints_and_a_resumed_job_uploads_the_uninterrupted_model() {
    let f = sam_fixture().await;
    let mut settings = f.settings();
    settings.training.checkpoint_every = 100; // the CPnet setting does not apply to this family
    settings.training.cpsam_checkpoint_every = 1;
    let (result, events, mut checkpoints) =
        run_sam_with(&f, &f.world.user, values("sam-ck", 3), settings.clone(), None).await;
    let outcome = result.unwrap();
    let epochs = events.iter().filter(|e| matches!(e, JobEvent::Epoch(_))).count();
    assert_eq!(epochs, 3, "one epoch event per epoch");
    let at: Vec<(usize, usize)> = checkpoints.iter().map(|c| (c.epoch, c.step)).collect();
    assert_eq!(at, [(1, 0), (2, 0)], "after epochs 1 and 2 of 3");

    let after_one = checkpoints.swap_remove(0).bytes;
    let (result, events, _) =
        run_sam_with(&f, &f.world.user, values("sam-resumed", 3), settings.clone(), Some(after_one)).await;
    let resumed = result.unwrap();
    assert_eq!(resumed.train_losses, outcome.train_losses, "the resumed job's loss curve");
    let warned = events.iter().any(|e| matches!(e, JobEvent::Warning { message, .. } if message.starts_with("Resuming from the checkpoint after epoch 1")));
    assert!(warned, "the job did not say it resumed");
    let models = sam_models(&f).await;
    let file_of = |name: &str| models.iter().find(|m| m.0 == name).unwrap().1[0].0.clone();
    let a = f.world.user.files().download(&file_of("sam-ck")).await.unwrap();
    let b = f.world.user.files().download(&file_of("sam-resumed")).await.unwrap();
    assert!(a == b, "the resumed job's model differs from the uninterrupted job's");

    let cpnet =
        cellpose_train_worker::model::Model::new(crate::train::tiny_config(), tch::Device::Cpu).unwrap();
    let optim = cellpose_train_worker::train::Optimizer::new(
        cellpose_train_worker::train::OptimizerKind::Sgd,
        cpnet.vs.trainable_variables(),
        0.0,
    );
    let state = cellpose_train_worker::train::TrainState { epoch: 1, ..Default::default() };
    let cp_ck = cellpose_train_worker::train::checkpoint::encode(&cpnet, &optim, &state).unwrap();
    let (result, _, _) =
        run_sam_with(&f, &f.world.user, values("sam-wrong", 3), settings, Some(Bytes::from(cp_ck))).await;
    let err = result.unwrap_err();
    assert!(matches!(err, JobError::Checkpoint(_)), "{err}");
    assert!(err.to_string().contains("cpnet") && err.to_string().contains("start over"), "{err}");
    let names: Vec<String> = sam_models(&f).await.into_iter().map(|m| m.0).collect();
    assert_eq!(names, ["sam-ck", "sam-resumed", SAM_BASE], "nothing uploaded by the refused resume");
}

/// Issue 25: the report of a Cellpose-SAM job left at the tool's defaults (100 epochs, learning
/// rate 1e-5) shows the learning rates training used, which are cellpose 4.2.1.1's schedule: it
/// halves the rate every 5 epochs over the last 50. The report used to recompute them with
/// cellpose 3's schedule, whose tail starts only above 100 epochs: flat to the end.
#[tokio::test]
async fn a_default_cpsam_jobs_metrics_show_cellpose4s_learning_rates() {
    let f = sam_fixture().await;
    let mut v = values("sam-default", 100);
    // the tool's defaults; no validation region, so nothing but training runs
    for field in ["Learning Rate", "Epochs", "Weight Decay", "Validation Region"] {
        v.as_object_mut().unwrap().remove(field);
    }
    let outcome = run_sam(&f, &f.world.user, v).await.unwrap();
    let report = outcome.report_item_id.expect("a report item");
    let user = &f.world.user;
    let files = user.items().files(&report).await.unwrap();
    let file = |name: &str| files.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no {name}"));
    let jsonl = user.files().download(&file("metrics.jsonl").id).await.unwrap();
    let rates: Vec<f64> = std::str::from_utf8(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["stage"] == "train")
        .map(|l| l["lr"].as_f64().unwrap_or_else(|| panic!("no lr in {l}")))
        .collect();
    let cellpose4: Vec<Vec<f64>> =
        serde_json::from_str(run_train_ref(&["lr", "1e-05", "100"]).trim()).unwrap();
    assert_eq!(rates.len(), 100, "one line per epoch");
    for (epoch, (ours, theirs)) in rates.iter().zip(&cellpose4[0]).enumerate() {
        assert!(
            (ours - theirs).abs() <= 1e-15 * theirs.abs(),
            "epoch {epoch}: metrics.jsonl says lr {ours}, cellpose 4 trains with {theirs}"
        );
    }
    assert_eq!((rates[49], rates[99]), (1e-5, 1e-5 / 1024.0), "the halving tail");
    let png = user.files().download(&file("report.png").id).await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "report.png is a PNG");
}

#[tokio::test]
async fn cpsam_compute_uploads_a_model_cellpose4_loads_with_a_lower_loss() {
    let f = sam_fixture().await;
    let token = f.world.user_token.expose().to_string();
    let epochs = 6;
    let env = [("CPW_TRAINING__MIN_EPOCHS", "1")];
    let out =
        oneshot(&f, &token, "compute", json!({"workerInterface": values("sam-out", epochs)}), &env).await;
    assert!(
        out.status.success(),
        "compute failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let lines = json_lines(&out);
    let infos: Vec<&str> = lines.iter().filter_map(|l| l["info"].as_str()).collect();
    assert!(
        infos.iter().any(|i| i.starts_with(&format!("Epoch {epochs}/{epochs}: loss ")) && i.contains("ETA")),
        "no per-epoch progress with ETA: {infos:?}"
    );
    let done = infos.last().copied().unwrap_or_default();
    assert!(done.contains("Validation AP@0.5: ") && done.contains(" before, "), "{done}");

    // one model item with one file, in .cellposesam (not .cellpose)
    let models = sam_models(&f).await;
    let names: Vec<&str> = models.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(names, ["sam-out", SAM_BASE], "{models:?}");
    let files = &models.iter().find(|m| m.0 == "sam-out").unwrap().1;
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(f.folder("models").await.iter().all(|i| i.1 != "sam-out"), "uploaded to .cellpose too");
    let dir = tempdir();
    let trained = dir.path().join("sam-out.pth");
    let model_bytes = f.world.user.files().download(&files[0].0).await.unwrap();
    std::fs::write(&trained, &model_bytes).unwrap();
    check_package(&f, &model_bytes, dir.path()).await;
    let base = fixture_file("cpsam/tiny.pth");
    let (before, after) = cellpose4_checks(
        &f.world.user,
        &f.world.dataset_id,
        &values("x", epochs),
        &trained,
        &base,
        dir.path(),
    )
    .await;
    assert!(after < 0.9 * before, "the job did not lower cellpose 4's loss: {before} -> {after}");
}

/// The report item beside a Cellpose-SAM job's model (it had a validation region) holds the
/// model as a BioImage.IO package: its weights are the uploaded file, it describes cellpose 4's
/// network, its README has the training and the scores, and `bioimageio test` passes on it (when .venv-bioimageio is there).
async fn check_package(f: &Fixture, model: &[u8], dir: &std::path::Path) {
    let user = &f.world.user;
    let folder = store::family_folder(user, &f.world.user_id, ROOT, &["reports"]).await.unwrap();
    let reports = user.items().list(&folder.id).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let files = user.items().files(&reports[0].id).await.unwrap();
    let zip = files.iter().find(|f| f.name == "sam-out.bioimageio.zip").unwrap_or_else(|| {
        panic!(
            "no BioImage.IO package in the report: {:?}",
            files.iter().map(|f| &f.name).collect::<Vec<_>>()
        )
    });
    let zip = user.files().download(&zip.id).await.unwrap();
    let pkg = dir.join("package");
    zip::ZipArchive::new(std::io::Cursor::new(zip.to_vec())).unwrap().extract(&pkg).unwrap();
    assert!(std::fs::read(pkg.join("weights.pt")).unwrap() == model, "weights.pt is not the uploaded model");
    let rdf = std::fs::read_to_string(pkg.join("rdf.yaml")).unwrap();
    assert!(rdf.contains("cellpose_sam.py") && rdf.contains("cellpose_version: 4.2.1.1"), "{rdf}");
    // the README tells the training and the validation scores (from the report's metrics.jsonl)
    let readme = std::fs::read_to_string(pkg.join("README.md")).unwrap();
    assert!(
        readme.contains("- epochs: 6") && readme.contains("Scores of this model on the test set"),
        "{readme}"
    );
    crate::export::check_package_if_possible(&pkg, dir);
}

/// What the issue asks of a trained Cellpose-SAM file: cellpose 4.2.1.1 loads it (same keys and
/// values) and segments with it; returns cellpose 4's loss (computed by Python) of `base` and of
/// `trained` on the job's training crops, fetched as the job fetches them for `values`.
pub(crate) async fn cellpose4_checks(
    client: &GirderClient,
    dataset_id: &str,
    values: &Value,
    trained: &std::path::Path,
    base: &std::path::Path,
    dir: &std::path::Path,
) -> (f64, f64) {
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    run_cp4_tool(&["check".to_string(), s(trained)]);

    let mut settings = cellpose_train_worker::config::Settings::default();
    settings.training.min_epochs = 1;
    let (params, _) = Cpsam.validate(values, &settings, &|_| true).unwrap();
    let img = dataset::open_dataset(client, dataset_id).await.unwrap();
    let tags =
        [params.training_tags.clone(), params.region_tags.clone(), params.validation_tags.clone()].concat();
    let (anns, _, _) = dataset::load_annotations(client, dataset_id, &tags).await.unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let raw =
        dataset::collect_samples(client, &img, &params, &anns, u64::MAX, &Events::new(tx), &Control::new())
            .await
            .unwrap();
    assert_eq!(raw.train.len(), 3, "three training quadrants");
    assert_eq!(raw.train[0].image.dim(), (2, 64, 64), "one crop channel per chosen slot");
    let (imgs, labels) = (dir.join("imgs.npy"), dir.join("labels.npy"));
    write_raw(&raw.train, &imgs, &labels);
    let seg = dir.join("seg");
    let first = dir.join("first.npy");
    ndarray_npy::write_npy(&first, &raw.train[0].image).unwrap();
    run_cp4_tool(&["eval".to_string(), s(trained), s(&first), s(&seg), "--channel-axis".into(), "0".into()]);
    assert!(dir.join("seg_masks0.npy").is_file(), "cellpose 4 did not segment with the model");

    let loss = |model: &std::path::Path| -> f64 {
        run_train_ref(&["cploss".to_string(), s(model), s(&imgs), s(&labels)]).trim().parse().unwrap()
    };
    let (before, after) = (loss(base), loss(trained));
    eprintln!("cellpose 4 loss on the job's training crops: base {before:.4}, trained {after:.4}");
    (before, after)
}

#[tokio::test]
async fn cpsam_fields_are_checked_before_any_download() {
    let f = sam_fixture().await;
    let user = &f.world.user;
    for (change, field, needle) in [
        (("Channel for Slot 1", json!({"0": false})), "Channel for Slot 1", "Slot 1 is required"),
        (("Output Model Name", json!("cellpose-sam")), "Output Model Name", "reserved for a built-in"),
        (("Base Model", json!("nope")), "Base Model", ".cellposesam/models"),
    ] {
        let mut v = values("sam-out", 2);
        v[change.0] = change.1;
        let err = run_sam(&f, user, v).await.unwrap_err();
        match &err {
            JobError::Params(p) => {
                assert!(p.0.iter().any(|e| e.field == field && e.message.contains(needle)), "{err}")
            }
            other => panic!("{field}: expected a parameter error, got {other}"),
        }
    }
    // a channel the dataset lacks is named by its slot
    let mut v = values("sam-out", 2);
    v["Channel for Slot 2"] = json!({"7": true});
    let err = run_sam(&f, user, v).await.unwrap_err().to_string();
    assert!(err.contains("Slot 2 channel 7 is not in the dataset"), "{err}");
    let names: Vec<String> = sam_models(&f).await.into_iter().map(|m| m.0).collect();
    assert_eq!(names, [SAM_BASE], "nothing uploaded");
}

#[tokio::test]
async fn cpsam_interface_posts_the_slot_fields_and_hides_reserved_user_models() {
    let f = sam_fixture().await;
    let user = &f.world.user;
    let bytes = Bytes::from(std::fs::read(fixture_file("cpsam/tiny.pth")).unwrap());
    store::upload_model_in(user, &f.world.user_id, ROOT, "cellpose-sam", bytes, "t").await.unwrap();
    let token = f.world.user_token.expose().to_string();
    let image = "nimbusimage/cellposesam_train:latest";
    let out = oneshot(&f, &token, "interface", json!({"image": image}), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = user.worker_interfaces().get(image).await.unwrap().expect("interface stored for the image");
    assert_eq!(doc["Cellpose-SAM retrain"]["type"], "notes");
    for slot in SLOTS {
        assert_eq!(doc[slot]["type"], "channelCheckboxes", "{slot}");
    }
    assert!(doc.get("Primary Channel").is_none());
    let num = |k: &str| (doc[k]["min"].clone(), doc[k]["max"].clone(), doc[k]["default"].clone());
    assert_eq!(num("Learning Rate"), (json!(0.000001), json!(0.1), json!(0.00001)));
    assert_eq!(num("Epochs"), (json!(10), json!(2000), json!(100)));
    assert_eq!(num("Weight Decay"), (json!(0.0), json!(1.0), json!(0.1)));
    assert_eq!(doc["Base Model"]["default"], "cellpose-sam");
    // no cpsam weights installed: only the user's models, the reserved label's namesake dropped
    assert_eq!(doc["Base Model"]["items"], json!([SAM_BASE]));
    assert!(doc.get("Validation Region").is_some());

    // the Dockerfile's Cellpose-SAM image says its tool whatever it is named; without the
    // setting a name without `cellposesam` in it is the CPnet tool's
    let plain = "lab/retrain:2";
    for (env, sam) in [(&[("CPW_ONESHOT__TOOL", "cellposesam")][..], true), (&[][..], false)] {
        let out = oneshot(&f, &token, "interface", json!({"image": plain}), env).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let doc = user.worker_interfaces().get(plain).await.unwrap().expect("interface stored");
        assert_eq!(doc.get("Channel for Slot 1").is_some(), sam, "{env:?}: {doc}");
        assert_eq!(doc.get("Primary Channel").is_some(), !sam, "{env:?}: {doc}");
    }
}

/// `serve` takes both job types from one queue and runs each with its family; the Cellpose-SAM
/// job, handed back earlier with a checkpoint after epoch 1, resumes from it and its checkpoints
/// are removed at the end.
#[tokio::test]
async fn serve_runs_a_cellpose_and_a_cellpose_sam_job_from_one_queue() {
    use cellpose_train_worker::config::Settings;
    use cellpose_train_worker::worker::{self, Finish, Worker};

    let (mock, world) = crate::worker_queue::world().await;
    crate::worker_queue::store_sam_base(&world).await;
    let cpnet_job = crate::worker_queue::submit(&world, "cp-model", 1).await;
    let sam_job = crate::worker_queue::submit_sam(&world, "sam-model", 2).await;
    let point = worker::checkpoints::Point { epoch: 1, step: 0 };
    let ck = crate::cpsam_resume::checkpoint_after_one_epoch();
    worker::checkpoints::save(&world.user, &world.user_id, &sam_job.id, point, ck).await.unwrap();

    let mut settings = Settings::default();
    settings.girder.api_url = mock.api_url.clone();
    settings.girder.api_key = Some(world.admin_api_key.clone());
    settings.training.device = "cpu".parse().unwrap();
    settings.training.bsize = 32;
    settings.training.min_epochs = 1;
    settings.server.listen = String::new();
    let shutdown = Control::new();
    let opts = worker::ServeOptions { worker_id: Some("both".into()), max_jobs: None };
    let mut w = Worker::new(settings, &opts, &shutdown).unwrap();
    let mut done = Vec::new();
    while let Some((id, finish)) = w.try_execute_job().await.unwrap() {
        done.push((id, finish));
    }
    done.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![(cpnet_job.id.clone(), Finish::Success), (sam_job.id.clone(), Finish::Success)];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(done, want);
    let user = &world.user;
    let sam = store::list_models(user, &world.user_id, ROOT).await.unwrap();
    let cp = store::list_models(user, &world.user_id, store::CELLPOSE).await.unwrap();
    let names = |v: &[cellpose_train_worker::girder::Item]| {
        let mut n: Vec<String> = v.iter().map(|i| i.name.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&sam), ["sam-model", SAM_BASE], "the Cellpose-SAM job's model in .cellposesam");
    assert_eq!(names(&cp), ["cp-model", "tiny-base"], "the Cellpose job's model in .cellpose");
    let log = world.user.jobs().get(&sam_job.id).await.unwrap().log.unwrap_or_default();
    assert!(
        log.iter().any(|l| l.starts_with("Resuming from the checkpoint after epoch 1 (round 1)")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("Epoch 2/2")), "{log:?}");
    assert!(!log.iter().any(|l| l.contains("Epoch 1/2")), "epoch 1 trained again: {log:?}");
    let left = worker::checkpoints::latest(&world.user, &world.user_id, &sam_job.id).await.unwrap();
    assert!(left.is_none(), "the job's checkpoint outlived it");
}
