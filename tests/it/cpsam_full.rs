//! Issue 16's must-show at full size, `#[ignore]`d because each takes 10-20 minutes and ~10 GB
//! on 2 CPU cores (run with `cargo test --release --test it -- --ignored cpsam_full
//! --test-threads=1`): a random-init full-size Cellpose-SAM (cellpose 4's own `CPSAM()`, 1.2 GB)
//! stored as the user's model, one-shot `compute` of "Cellpose-SAM retrain" against the mock and
//! against a real Girder 5, then cellpose 4.2.1.1 loads the uploaded file, segments with it, and
//! its loss on the training crops is below the base's. Also a full-size checkpoint, encoded and
//! resumed, with its size.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use cellpose_train_worker::girder::GirderClient;
use cellpose_train_worker::job::store;
use cellpose_train_worker::model::{CpsamConfig, CpsamModel};
use cellpose_train_worker::train::cpsam::{checkpoint, trained_parameters};
use cellpose_train_worker::train::{Optimizer, OptimizerKind, TrainState};

use crate::cpsam_job::{cellpose4_checks, values_for, ROOT};
use crate::helpers::{run_cp4_tool, tempdir};
use crate::job::{fixture, json_lines, oneshot, stderr, TINY};

const BASE: &str = "random sam";
const EPOCHS: usize = 3;

/// cellpose 4's `CPSAM()` with random weights, saved by `save_model`.
fn random_full_base(dir: &Path) -> PathBuf {
    let path = dir.join("random-cpsam.pth");
    let out =
        run_cp4_tool(&["vitl".to_string(), path.to_str().unwrap().to_string(), "--seed".into(), "3".into()]);
    eprintln!("random cpsam (parameters, tensors): {}", out.trim());
    path
}

/// One model item with one file in `.cellposesam/models` besides the base, and the cellpose 4
/// checks on that file.
async fn check_upload(client: &GirderClient, user_id: &str, dataset_id: &str, base: &Path, dir: &Path) {
    let folder = store::family_folder(client, user_id, ROOT, &["models"]).await.unwrap();
    let items = client.items().list(&folder.id).await.unwrap();
    let mut names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["full-out", BASE], "one new model item in .cellposesam/models");
    let item = items.iter().find(|i| i.name == "full-out").unwrap();
    let files = client.items().files(&item.id).await.unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let trained = dir.join("full-out.pth");
    std::fs::write(&trained, client.files().download(&files[0].id).await.unwrap()).unwrap();
    let size = std::fs::metadata(&trained).unwrap().len();
    eprintln!("uploaded model: {size} bytes (base {} bytes)", std::fs::metadata(base).unwrap().len());
    let (before, after) =
        cellpose4_checks(client, dataset_id, &values_for(BASE, "x", EPOCHS), &trained, base, dir).await;
    assert!(after < before, "the job did not lower cellpose 4's loss: {before} -> {after}");
}

fn assert_compute_ok(out: &std::process::Output, wall: f64) {
    assert!(
        out.status.success(),
        "compute failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    let lines = json_lines(out);
    let infos: Vec<&str> = lines.iter().filter_map(|l| l["info"].as_str()).collect();
    let epochs: Vec<&&str> = infos.iter().filter(|i| i.starts_with("Epoch ")).collect();
    eprintln!("compute: {wall:.0} s wall; epochs: {epochs:?}; last: {:?}", infos.last());
    assert_eq!(epochs.len(), EPOCHS, "{infos:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full-size Cellpose-SAM: ~15 min and ~10 GB on 2 cores"]
async fn cpsam_full_oneshot_compute_against_the_mock() {
    let f = fixture(128, 14, &TINY).await;
    let dir = tempdir();
    let base = random_full_base(dir.path());
    let bytes = Bytes::from(std::fs::read(&base).unwrap());
    store::upload_model_in(&f.world.user, &f.world.user_id, ROOT, BASE, bytes, "seed").await.unwrap();
    let token = f.world.user_token.expose().to_string();
    let params = json!({"workerInterface": values_for(BASE, "full-out", EPOCHS)});
    let t0 = Instant::now();
    let out = oneshot(&f, &token, "compute", params, &[("CPW_TRAINING__MIN_EPOCHS", "1")]).await;
    assert_compute_ok(&out, t0.elapsed().as_secs_f64());
    check_upload(&f.world.user, &f.world.user_id, &f.world.dataset_id, &base, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full-size Cellpose-SAM on a real Girder: ~20 min and ~10 GB on 2 cores"]
async fn cpsam_full_oneshot_compute_against_a_real_girder() {
    let real = crate::real_girder::RealGirder::start();
    let world = crate::real_girder_job::world(&real, 128, 14, &TINY).await;
    let dir = tempdir();
    let base = random_full_base(dir.path());
    let bytes = Bytes::from(std::fs::read(&base).unwrap());
    store::upload_model_in(&world.user, &world.user_id, ROOT, BASE, bytes, "seed").await.unwrap();
    let params = json!({"workerInterface": values_for(BASE, "full-out", EPOCHS)});
    let t0 = Instant::now();
    // blocking is fine here: the real Girder serves from a process of its own
    let out = crate::real_girder_job::oneshot_at(&real.api_url, &world, "compute", params, dir.path());
    assert_compute_ok(&out, t0.elapsed().as_secs_f64());
    check_upload(&world.user, &world.user_id, &world.dataset_id, &base, dir.path()).await;
}

/// A full-size checkpoint: its size, the time to encode and to resume from it, and a resumed
/// network and optimizer equal to the ones saved.
#[test]
#[ignore = "full-size Cellpose-SAM checkpoint: ~12 GB of memory"]
fn cpsam_full_checkpoint_round_trips() {
    tch::manual_seed(1);
    let model = CpsamModel::new(CpsamConfig::default(), Device::Cpu).unwrap();
    let trained = trained_parameters(&model);
    let n: i64 = trained.iter().map(|(_, t)| t.numel() as i64).sum();
    eprintln!("parameters: {} in all, {n} trained", model.num_params());
    let mut optim = Optimizer::new(OptimizerKind::Adamw, trained.into_iter().map(|(_, t)| t).collect(), 0.1);
    let m = Tensor::randn([n], (Kind::Float, Device::Cpu));
    let v = Tensor::rand([n], (Kind::Float, Device::Cpu));
    optim.load_state_tensors(&[("m".into(), m.shallow_clone()), ("v".into(), v.shallow_clone())], 7);
    let state = TrainState { epoch: 25, optimizer_steps: 7, ..Default::default() };
    let t0 = Instant::now();
    let bytes = checkpoint::encode(&model, &optim, &state).unwrap();
    let encode_s = t0.elapsed().as_secs_f64();
    drop(optim);
    eprintln!("full-size cpsam checkpoint: {} bytes, encoded in {encode_s:.1} s", bytes.len());
    assert!(bytes.len() as i64 >= 12 * n && (bytes.len() as i64) < 12 * n + (1 << 20), "{}", bytes.len());

    tch::manual_seed(2);
    let fresh = CpsamModel::new(CpsamConfig::default(), Device::Cpu).unwrap();
    let t1 = Instant::now();
    let resume = checkpoint::load(&bytes, "full.ckpt", &fresh).unwrap();
    eprintln!("resumed in {:.1} s", t1.elapsed().as_secs_f64());
    assert_eq!(resume.state, state);
    let saved = model.vs.variables();
    for (name, t) in trained_parameters(&fresh) {
        assert!(t.equal(&saved[&name]), "`{name}` differs after the resume");
    }
    let moment = |k: &str| &resume.optimizer_state.iter().find(|(n, _)| n == k).unwrap().1;
    assert!(moment("m").equal(&m) && moment("v").equal(&v), "moments differ after the resume");
}
