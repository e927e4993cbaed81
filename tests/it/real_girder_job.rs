//! The product end to end against a real Girder 5.0.21 (real upload protocol, real large_image
//! tiles, real job state machine and log): NimbusImage's one-shot `compute` and `interface`, and
//! `serve` workers handing a job back on SIGTERM, taking one over after a SIGKILL, stopping on a
//! cancel, and leaving no checkpoint behind.

use std::process::Output;
use std::time::{Duration, Instant};

use cellpose_train_worker::demo::seed::{interface_values, seed, DemoSpec, DemoWorld};
use cellpose_train_worker::girder::{GirderConfig, JobStatus, ParentType};
use cellpose_train_worker::job::store;
use serde_json::{json, Value};

use super::helpers::{bin, run_python, tempdir};
use super::real_girder::{set_disk_reserve, RealGirder};
use super::worker_queue::{start_worker_with, submit, Worker};

pub(super) async fn world(real: &RealGirder, size: usize, cells: usize, nbase: &[i64]) -> DemoWorld {
    let spec =
        DemoSpec { size, cells, seed: 5, base_nbase: nbase.to_vec(), base_model_name: "tiny-base".into() };
    seed(GirderConfig::new(&real.api_url), &spec)
        .await
        .unwrap_or_else(|e| panic!("seeding: {e}\n{}", real.stderr()))
}

/// `(name, number of files)` of every item in `Private/.cellpose/<sub>`.
async fn items(world: &DemoWorld, sub: &str) -> Vec<(String, usize)> {
    let folder = store::cellpose_folder(&world.user, &world.user_id, &[sub]).await.unwrap();
    let mut out = Vec::new();
    for item in world.user.items().list(&folder.id).await.unwrap() {
        out.push((item.name.clone(), world.user.items().files(&item.id).await.unwrap().len()));
    }
    out.sort();
    out
}

async fn model_item(world: &DemoWorld, name: &str) -> cellpose_train_worker::girder::Item {
    let models = store::list_user_models(&world.user, &world.user_id).await.unwrap();
    models.into_iter().find(|i| i.name == name).unwrap_or_else(|| panic!("no model item {name}"))
}

fn oneshot(
    real: &RealGirder,
    world: &DemoWorld,
    request: &str,
    params: Value,
    dir: &std::path::Path,
) -> Output {
    oneshot_at(&real.api_url, world, request, params, dir)
}

/// The one-shot binary against the Girder at `api_url`, as the user of `world`, on the CPU with
/// epochs from 1; models and work files in `dir`.
pub(super) fn oneshot_at(
    api_url: &str,
    world: &DemoWorld,
    request: &str,
    params: Value,
    dir: &std::path::Path,
) -> Output {
    let cfg = dir.join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    bin()
        .args(["--apiUrl", api_url, "--token", world.user_token.expose(), "--request", request])
        .args(["--parameters", &params.to_string(), "--datasetId", &world.dataset_id])
        .arg("--config")
        .arg(&cfg)
        .env("CPW_TRAINING__DEVICE", "cpu")
        .env("CPW_TRAINING__BSIZE", "32")
        .env("CPW_TRAINING__MIN_EPOCHS", "1")
        .env("CPW_PATHS__MODELS_DIR", dir)
        .env("CPW_PATHS__WORK_DIR", dir.join("work"))
        .output()
        .unwrap()
}

fn progress_of(out: &Output) -> Vec<f64> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["progress"].as_f64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_compute_on_a_real_girder_uploads_a_model_cellpose_loads_and_replaces_it_safely() {
    let real = RealGirder::start();
    let world = world(&real, 128, 14, &[32, 64, 128, 256]).await;
    let dir = tempdir();
    let out = oneshot(&real, &world, "interface", json!({"image": "cellpose-train-worker:test"}), dir.path());
    assert!(out.status.success(), "interface failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let iface = world.user.worker_interfaces().get("cellpose-train-worker:test").await.unwrap();
    let bases = iface.as_ref().and_then(|i| i["Base Model"]["items"].as_array().cloned()).unwrap_or_default();
    assert!(bases.contains(&json!("tiny-base")), "the user's model is offered: {iface:?}");

    let params = |epochs| json!({"workerInterface": interface_values("tiny-base", "real-model", epochs)});
    let out = oneshot(&real, &world, "compute", params(2), dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "compute failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        real.stderr()
    );
    let progress = progress_of(&out);
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress went down: {progress:?}");
    assert_eq!(progress.last(), Some(&1.0), "{stdout}");
    assert!(stdout.contains("Validation AP@0.5: "), "{stdout}");

    assert_eq!(items(&world, "models").await, [("real-model".to_string(), 1), ("tiny-base".to_string(), 1)]);
    let reports = items(&world, "reports").await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        reports[0].1, 6,
        "metrics.jsonl, qc.csv, report.json, report.png, overlay.png, the package: {reports:?}"
    );
    let model = model_item(&world, "real-model").await;
    let bytes = world.user.items().download(&model.id).await.unwrap();
    let path = dir.path().join("real-model");
    std::fs::write(&path, &bytes).unwrap();
    let py = run_python(
        r#"
import sys, numpy as np
from cellpose import models
m = models.CellposeModel(pretrained_model=sys.argv[1], gpu=False)
masks = m.eval(np.random.RandomState(0).rand(2, 64, 64).astype('float32'), channels=[1, 2], channel_axis=0, diameter=30.)[0]
print('ok', masks.shape)
"#,
        &[path.to_str().unwrap()],
    );
    assert_eq!(py.trim(), "ok (64, 64)");

    // the same name again: the new model replaces the old one only once stored
    let out = oneshot(&real, &world, "compute", params(1), dir.path());
    assert!(out.status.success(), "second compute failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(items(&world, "models").await, [("real-model".to_string(), 1), ("tiny-base".to_string(), 1)]);
    let again = model_item(&world, "real-model").await;
    let stored = world.user.items().download(&again.id).await.unwrap();
    assert_ne!(stored, bytes, "the new weights");
    assert_eq!(items(&world, "reports").await.len(), 2);

    // a full disk: Girder refuses the upload; the stored model stays, the trained one is kept
    // on the worker and the error says both
    let admin_token = world.admin.token().await.unwrap().expect("the admin has a token");
    set_disk_reserve(&real.api_url, admin_token.expose(), 1 << 40).await;
    // two epochs: training is deterministic, so one epoch again would make the stored file
    let out = oneshot(&real, &world, "compute", params(2), dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "compute on a full disk succeeded:\n{stdout}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}):\n{stdout}"));
    assert_eq!(last["type"], "error", "{last}");
    let message = last["error"].as_str().unwrap_or_default();
    assert!(message.contains("insufficient free space"), "Girder's reason is given: {last}");
    let kept = message
        .split("kept on the worker at ")
        .nth(1)
        .map(|p| p.trim_end_matches('.'))
        .unwrap_or_else(|| panic!("the kept model's path is given: {last}"));
    let kept = std::fs::read(kept).unwrap_or_else(|e| panic!("kept model {kept}: {e}"));
    assert!(kept.len() == stored.len() && kept != stored, "the kept file is the newly trained model");
    assert_eq!(items(&world, "models").await, [("real-model".to_string(), 1), ("tiny-base".to_string(), 1)]);
    let after = model_item(&world, "real-model").await;
    assert_eq!(
        world.user.items().download(&after.id).await.unwrap(),
        stored,
        "the stored model is untouched"
    );
}

fn start_worker(
    real: &RealGirder,
    world: &DemoWorld,
    id: &str,
    dir: &std::path::Path,
    lease_s: u64,
) -> Worker {
    let (lease, work) = (lease_s.to_string(), dir.join(format!("{id}-work")));
    let env = [("CPW_QUEUE__LEASE_S", lease.as_str()), ("CPW_PATHS__WORK_DIR", work.to_str().unwrap())];
    start_worker_with(&real.api_url, world, id, dir, &env)
}

/// Every line of the job's log (an entry of a real Girder's log is one PUT and may hold several).
async fn log_lines(world: &DemoWorld, id: &str) -> Vec<String> {
    let job = world.user.jobs().get(id).await.unwrap();
    job.log
        .unwrap_or_default()
        .iter()
        .flat_map(|e| e.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

async fn wait_for(
    world: &DemoWorld,
    id: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&[String], JobStatus) -> bool,
) {
    let t0 = Instant::now();
    loop {
        let job = world.user.jobs().get(id).await.unwrap();
        let lines = log_lines(world, id).await;
        if pred(&lines, job.status) {
            return;
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}; status {:?}, log {lines:?}", job.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn claimed_by(lines: &[String], worker: &str) -> bool {
    lines
        .iter()
        .any(|l| l.starts_with("[cellpose-train-worker] claim") && l.contains(&format!("worker={worker} ")))
}

fn checkpointed(lines: &[String]) -> bool {
    lines.iter().any(|l| l.starts_with("Checkpoint saved after epoch"))
}

async fn checkpoint_items_left(world: &DemoWorld) -> usize {
    let ck = store::cellpose_folder(&world.user, &world.user_id, &["checkpoints"]).await.unwrap();
    let mut n = 0;
    for f in world.user.folders().list(ParentType::Folder, &ck.id).await.unwrap() {
        n += world.user.items().list(&f.id).await.unwrap().len();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_on_a_real_girder_hands_back_on_sigterm_takes_over_after_a_kill_and_stops_on_cancel() {
    const LEASE_S: u64 = 12;
    let real = RealGirder::start();
    let world = world(&real, 192, 24, &[8, 16, 32, 64]).await;
    let dir = tempdir();

    // SIGTERM: the job is handed back and the other worker takes it at once, not after the lease
    let handed = submit(&world, "handed-back", 60).await;
    let mut a = start_worker(&real, &world, "wa", dir.path(), LEASE_S);
    wait_for(&world, &handed.id, Duration::from_secs(120), "first checkpoint", |l, _| checkpointed(l)).await;
    let mut b = start_worker(&real, &world, "wb", dir.path(), LEASE_S);
    tokio::time::sleep(Duration::from_secs(1)).await; // b polls and sees a RUNNING job with a live lease
    let sent = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    wait_for(&world, &handed.id, Duration::from_secs(LEASE_S * 3), "takeover after SIGTERM", |l, _| {
        claimed_by(l, "wb")
    })
    .await;
    let handback = sent.elapsed();
    eprintln!(
        "real Girder: SIGTERM hand-back taken by the next worker after {:.2} s (lease {LEASE_S} s)",
        handback.as_secs_f64()
    );
    let status = a.child.wait().unwrap();
    assert!(status.success(), "SIGTERMed worker exited {status}:\n{}", a.log());
    assert!(
        handback < Duration::from_secs(LEASE_S / 2),
        "hand-back took {handback:?}, the lease is {LEASE_S} s:\n{}",
        a.log()
    );
    wait_for(&world, &handed.id, Duration::from_secs(180), "handed-back job to finish", |_, s| {
        s.is_terminal()
    })
    .await;
    let lines = log_lines(&world, &handed.id).await;
    assert_eq!(
        world.user.jobs().get(&handed.id).await.unwrap().status,
        JobStatus::SUCCESS,
        "{lines:?}\n{}",
        b.log()
    );
    assert!(lines.iter().any(|l| l.starts_with("Resuming from the checkpoint after epoch")), "{lines:?}");

    // SIGKILL: taken over after the lease and resumed from the checkpoint
    let killed = submit(&world, "killed", 60).await;
    wait_for(&world, &killed.id, Duration::from_secs(120), "checkpoint under wb", |l, _| {
        claimed_by(l, "wb") && checkpointed(l)
    })
    .await;
    let mut c = start_worker(&real, &world, "wc", dir.path(), LEASE_S);
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    wait_for(&world, &killed.id, Duration::from_secs(240), "killed job to finish", |_, s| s.is_terminal())
        .await;
    let lines = log_lines(&world, &killed.id).await;
    assert_eq!(
        world.user.jobs().get(&killed.id).await.unwrap().status,
        JobStatus::SUCCESS,
        "{lines:?}\n{}",
        c.log()
    );
    assert!(claimed_by(&lines, "wc"), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("Resuming from the checkpoint after epoch")), "{lines:?}");

    // cancel: CANCELED, nothing uploaded
    let canceled = submit(&world, "canceled", 200).await;
    wait_for(&world, &canceled.id, Duration::from_secs(120), "training under wc", |l, _| checkpointed(l))
        .await;
    world.user.jobs().cancel(&canceled.id).await.unwrap();
    wait_for(&world, &canceled.id, Duration::from_secs(30), "cancel", |_, s| s.is_terminal()).await;
    assert_eq!(world.user.jobs().get(&canceled.id).await.unwrap().status, JobStatus::CANCELED);

    let models = items(&world, "models").await;
    assert_eq!(
        models,
        [("handed-back".to_string(), 1), ("killed".to_string(), 1), ("tiny-base".to_string(), 1)]
    );
    // checkpoints: every item removed when its job ended (the folder delete may be refused: 503)
    let t0 = Instant::now();
    while checkpoint_items_left(&world).await > 0 && t0.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(checkpoint_items_left(&world).await, 0, "checkpoint items left behind:\n{}", c.log());
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &c.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(c.child.wait().unwrap().success(), "{}", c.log());
}
