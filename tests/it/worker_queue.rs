//! The queue worker as deployed: real `serve` processes against the mock Girder (in this test
//! process), jobs of both tools (Cellpose and Cellpose-SAM) on one queue, submitted through the
//! REST API as the platform does, and the faults a deployment meets: a worker SIGKILLed
//! mid-training, a job canceled mid-training, SIGTERM, 5xx answers and dropped connections.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cellpose_train_worker::demo::seed::{interface_values, seed, DemoSpec, DemoWorld};
use cellpose_train_worker::girder::{GirderClient, GirderConfig, Job, JobStatus, JobUpdate, NewJob};
use cellpose_train_worker::job::store;
use cellpose_train_worker::mock_girder::{spawn_mock, MockConfig, MockHandle};
use serde_json::{json, Value};

use super::girder_seed::fault;
use super::helpers::{bin, tempdir};

/// A small dataset and a small base network so that jobs take seconds on 2 cores.
pub(super) async fn world() -> (MockHandle, DemoWorld) {
    let mock = spawn_mock(MockConfig::default()).await.unwrap();
    let spec = DemoSpec {
        size: 192,
        cells: 24,
        seed: 3,
        base_nbase: vec![8, 16, 32, 64],
        base_model_name: "tiny-base".into(),
    };
    let world = seed(GirderConfig::new(mock.api_url.clone()), &spec).await.unwrap();
    (mock, world)
}

/// Queues a "Cellpose retrain" job training `name` from the world's base model.
pub(super) async fn submit(world: &DemoWorld, name: &str, epochs: usize) -> Job {
    let values = interface_values(&world.base_model, name, epochs);
    submit_as(world, "cellpose_train", name, values).await
}

/// Queues a "Cellpose-SAM retrain" job training `name` from the tiny cpsam stored by
/// [`store_sam_base`].
pub(super) async fn submit_sam(world: &DemoWorld, name: &str, epochs: usize) -> Job {
    submit_as(world, "cellposesam_train", name, crate::cpsam_job::values_for(SAM_BASE, name, epochs)).await
}

/// The user's tiny Cellpose-SAM model (the fixture) in `.cellposesam/models`, named [`SAM_BASE`].
pub(super) async fn store_sam_base(world: &DemoWorld) {
    let bytes = bytes::Bytes::from(std::fs::read(super::helpers::fixture("cpsam/tiny.pth")).unwrap());
    store::upload_model_in(&world.user, &world.user_id, crate::cpsam_job::ROOT, SAM_BASE, bytes, "seed")
        .await
        .unwrap();
}

pub(super) const SAM_BASE: &str = "tiny sam";

/// Queues a job of `job_type` with the interface `values`, as NimbusImage submits one.
async fn submit_as(world: &DemoWorld, job_type: &str, name: &str, values: Value) -> Job {
    let kwargs = json!({
        "request": "compute",
        "datasetId": world.dataset_id,
        "token": world.user_token.expose(),
        "parameters": {"workerInterface": values}
    });
    let new =
        NewJob { title: name.into(), job_type: job_type.into(), kwargs: Some(kwargs), ..Default::default() };
    let job = world.creator.jobs().create(&new).await.unwrap();
    world
        .user
        .jobs()
        .update(&job.id, &JobUpdate { status: Some(JobStatus::QUEUED), ..Default::default() })
        .await
        .unwrap();
    job
}

pub(super) struct Worker {
    pub id: String,
    pub child: Child,
    /// Its stderr (the log).
    pub log: std::path::PathBuf,
}

/// A test that fails part-way leaves no worker behind polling (the panic drops it).
impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Worker {
    /// What the worker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub(super) fn start_worker(mock: &MockHandle, world: &DemoWorld, id: &str, dir: &std::path::Path) -> Worker {
    start_worker_with(&mock.api_url, world, id, dir, &[])
}

/// A `serve` process against the Girder at `api_url` with the seeded service account, fast
/// polls and heartbeats, a 4 s lease and checkpoints every 2 epochs (both families); `env` adds or overrides
/// `CPW_*` variables.
pub(super) fn start_worker_with(
    api_url: &str,
    world: &DemoWorld,
    id: &str,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Worker {
    let log = dir.join(format!("{id}.log"));
    // an empty settings file: everything below comes from the environment, as in a container
    let config = dir.join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let child = bin()
        .args(["serve", "--worker-id", id, "--config"])
        .arg(&config)
        .env("CPW_GIRDER__API_URL", api_url)
        .env("CPW_GIRDER__API_KEY", world.admin_api_key.expose())
        .env("CPW_QUEUE__POLL_INTERVAL_S", "0.3")
        .env("CPW_QUEUE__HEARTBEAT_S", "0.5")
        .env("CPW_QUEUE__LEASE_S", "4")
        .env("CPW_QUEUE__SHUTDOWN_GRACE_S", "10")
        .env("CPW_TRAINING__DEVICE", "cpu")
        .env("CPW_TRAINING__BSIZE", "32")
        .env("CPW_TRAINING__MIN_EPOCHS", "1")
        .env("CPW_TRAINING__CHECKPOINT_EVERY", "2")
        .env("CPW_TRAINING__CPSAM_CHECKPOINT_EVERY", "2")
        // every epoch's progress in Girder: the tests cancel and kill at progress points while
        // training runs, and these epochs take milliseconds (the default reports once a second)
        .env("CPW_TRAINING__PROGRESS_INTERVAL_S", "0")
        .env("CPW_SERVER__LISTEN", "127.0.0.1:0")
        .env("CPW_LOG__FORMAT", "json")
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start serve");
    Worker { id: id.into(), child, log }
}

pub(super) fn sigterm(child: &Child) {
    let ok = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// Waits for a child to exit, up to `limit`.
pub(super) fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

pub(super) fn log_of(job: &Job) -> Vec<String> {
    job.log.clone().unwrap_or_default()
}

pub(super) fn claims(job: &Job) -> Vec<String> {
    log_of(job).into_iter().filter(|l| l.contains("[cellpose-train-worker] claim")).collect()
}

pub(super) fn worker_of(claim: &str) -> String {
    claim.split_whitespace().find_map(|w| w.strip_prefix("worker=")).unwrap_or_default().to_string()
}

pub(super) fn round_of(claim: &str) -> u64 {
    claim.split_whitespace().find_map(|w| w.strip_prefix("round=")).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The owner of each round by the claim rule: the first claim line of the round, in log order
/// (later claimants of the same round lost and backed off).
pub(super) fn round_owners(job: &Job) -> Vec<(u64, String)> {
    let mut owners: Vec<(u64, String)> = Vec::new();
    for c in claims(job) {
        let r = round_of(&c);
        if !owners.iter().any(|(o, _)| *o == r) {
            owners.push((r, worker_of(&c)));
        }
    }
    owners.sort();
    owners
}

/// `(name, files)` of the user's models of both families.
pub(super) async fn models(world: &DemoWorld) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut items = store::list_user_models(&world.user, &world.user_id).await.unwrap();
    items.extend(store::list_models(&world.user, &world.user_id, crate::cpsam_job::ROOT).await.unwrap());
    for item in items {
        let files = world.user.items().files(&item.id).await.unwrap();
        out.push((item.name, files.len()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_six_jobs_survive_kill_cancel_and_faults() {
    let (mock, world) = world().await;
    let user: &GirderClient = &world.user;
    let dir = tempdir();
    store_sam_base(&world).await;
    let names: Vec<String> = (0..6).map(|i| format!("queue-model-{i}")).collect();
    let mut jobs = Vec::new();
    // both tools on one queue: jobs 1 and 4 are Cellpose-SAM ones
    for (i, n) in names.iter().enumerate() {
        jobs.push(if i % 3 == 1 { submit_sam(&world, n, 12).await } else { submit(&world, n, 40).await });
    }
    // Girder hiccups through the run: 5xx on job updates and reads, dropped connections
    fault(&mock, json!({"method": "PUT", "path": "^/api/v1/job/[0-9a-f]+$", "count": 6, "status": 503}))
        .await;
    fault(&mock, json!({"method": "GET", "path": "^/api/v1/job/[0-9a-f]+$", "count": 4, "drop": true})).await;
    fault(&mock, json!({"method": "GET", "path": "^/api/v1/job/all$", "count": 3, "status": 502})).await;
    fault(&mock, json!({"method": "GET", "path": "tiles/region$", "count": 2, "status": 500})).await;
    fault(
        &mock,
        json!({"method": "PUT", "path": "^/api/v1/job/[0-9a-f]+$", "count": 2, "drop": true, "after": true}),
    )
    .await;

    let mut workers: Vec<Worker> =
        ["w0", "w1", "w2"].iter().map(|id| start_worker(&mock, &world, id, dir.path())).collect();

    let mut killed: Option<(String, String)> = None; // (job id, worker)
    let mut canceled: Option<String> = None;
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(240), "jobs did not finish in time");
        for w in workers.iter_mut() {
            let was_killed = killed.as_ref().is_some_and(|(_, k)| k == &w.id);
            if !was_killed && w.child.try_wait().unwrap().is_some() {
                panic!(
                    "worker {} exited early:\n{}",
                    w.id,
                    std::fs::read_to_string(&w.log).unwrap_or_default()
                );
            }
        }
        let mut all_done = true;
        for j in &jobs {
            let job = user.jobs().get(&j.id).await.unwrap();
            let progress = job.progress.as_ref().and_then(|p| p.current).unwrap_or(0.0);
            let checkpointed = log_of(&job).iter().any(|l| l.starts_with("Checkpoint saved after epoch"));
            if job.status == JobStatus::RUNNING && killed.is_none() && checkpointed {
                let owner = round_owners(&job).last().unwrap().1.clone();
                let w = workers.iter_mut().find(|w| w.id == owner).unwrap();
                w.child.kill().unwrap(); // SIGKILL
                w.child.wait().unwrap();
                killed = Some((job.id.clone(), owner));
            } else if job.status == JobStatus::RUNNING
                && canceled.is_none()
                && progress > 45.0
                && killed.as_ref().is_some_and(|(id, _)| id != &job.id)
            {
                user.jobs().cancel(&job.id).await.unwrap();
                canceled = Some(job.id.clone());
            }
            all_done &= job.status.is_terminal();
        }
        if all_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (killed_job, killed_worker) = killed.expect("no job was checkpointed while running");
    let canceled = canceled.expect("no job was canceled mid-training");

    let models = models(&world).await;
    for (j, name) in jobs.iter().zip(&names) {
        let job = user.jobs().get(&j.id).await.unwrap();
        let log = log_of(&job);
        if j.id == canceled {
            assert_eq!(job.status, JobStatus::CANCELED, "{log:?}");
            assert!(!models.iter().any(|(n, _)| n == name), "canceled job uploaded {name}");
            continue;
        }
        assert_eq!(job.status, JobStatus::SUCCESS, "job {name}: {log:?}");
        let uploads = log.iter().filter(|l| l.starts_with(&format!("Model {name} uploaded"))).count();
        assert_eq!(uploads, 1, "job {name} finished {uploads} times: {log:?}");
        assert_eq!(
            models.iter().filter(|(n, _)| n == name).map(|(_, f)| *f).collect::<Vec<_>>(),
            vec![1],
            "{name}: one item, one file"
        );
        let last_progress: Value = log
            .iter()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v.get("progress").is_some()))
            .unwrap();
        assert_eq!(last_progress["progress"], json!(1.0));
        if j.id == killed_job {
            let owners = round_owners(&job);
            assert!(
                owners.len() >= 2 && owners[0].1 == killed_worker,
                "no takeover: {owners:?} {:?}",
                claims(&job)
            );
            assert_ne!(owners.last().unwrap().1, killed_worker);
            let resumed = log
                .iter()
                .find(|l| l.starts_with("Resuming from the checkpoint after epoch"))
                .expect("no resume line");
            let epoch: usize = resumed.split_whitespace().nth(6).unwrap().parse().unwrap();
            assert!((2..40).contains(&epoch), "resumed at epoch {epoch}");
        } else {
            // one round, one owner (losing claimants of that round backed off)
            let owners = round_owners(&job);
            assert_eq!(owners.len(), 1, "job {name} changed hands without a takeover: {owners:?}");
        }
    }
    // checkpoints are removed when jobs end (just after the final status is recorded); the
    // mock, like a plain Girder 5, refuses folder deletes, so empty job folders may stay
    let ck = store::cellpose_folder(user, &world.user_id, &["checkpoints"]).await.unwrap();
    let t1 = Instant::now();
    let left = loop {
        let mut left = Vec::new();
        for f in user.folders().list(cellpose_train_worker::girder::ParentType::Folder, &ck.id).await.unwrap()
        {
            left.extend(
                user.items().list(&f.id).await.unwrap().into_iter().map(|i| (f.name.clone(), i.name)),
            );
        }
        if left.is_empty() || t1.elapsed() > Duration::from_secs(10) {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(left.is_empty(), "checkpoints left (job, item): {left:?}");

    // idle workers stop on SIGTERM with status 0
    for w in workers.iter_mut().filter(|w| w.id != killed_worker) {
        sigterm(&w.child);
        let status =
            wait_exit(&mut w.child, Duration::from_secs(15)).expect("worker did not stop on SIGTERM");
        assert!(
            status.success(),
            "{} exited {status}: {}",
            w.id,
            std::fs::read_to_string(&w.log).unwrap_or_default()
        );
    }
    // every log line of a job carries the job span
    let logs: String = workers.iter().map(|w| std::fs::read_to_string(&w.log).unwrap()).collect();
    let job_lines: Vec<&str> = logs.lines().filter(|l| l.contains("job succeeded")).collect();
    assert!(!job_lines.is_empty());
    for l in job_lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["span"]["job_id"].is_string() && v["span"]["user"] == json!("alice"), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_training_hands_the_job_back_and_another_worker_resumes_it() {
    let (mock, world) = world().await;
    let dir = tempdir();
    let job = submit(&world, "handed-back", 60).await;
    // a lease far longer than the test waits: only the release line lets the next worker in
    let long_lease = [("CPW_QUEUE__LEASE_S", "600")];
    let mut first = start_worker_with(&mock.api_url, &world, "first", dir.path(), &long_lease);
    let t0 = Instant::now();
    loop {
        if t0.elapsed() > Duration::from_secs(90) || first.child.try_wait().unwrap().is_some() {
            let j = world.user.jobs().get(&job.id).await.unwrap();
            panic!(
                "never checkpointed: {:?}\n{}",
                log_of(&j),
                std::fs::read_to_string(&first.log).unwrap_or_default()
            );
        }
        let j = world.user.jobs().get(&job.id).await.unwrap();
        if log_of(&j).iter().any(|l| l.starts_with("Checkpoint saved after epoch")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm(&first.child);
    let status =
        wait_exit(&mut first.child, Duration::from_secs(12)).expect("no exit within shutdown_grace_s");
    assert!(status.success(), "exit {status}: {}", std::fs::read_to_string(&first.log).unwrap_or_default());
    let j = world.user.jobs().get(&job.id).await.unwrap();
    // the release marker is a log entry of its own (one PUT is one entry on a real Girder)
    let release = log_of(&j)
        .into_iter()
        .find(|l| l.starts_with("[cellpose-train-worker] release round=1 worker=first"))
        .expect("no release entry");
    assert_eq!(release.lines().count(), 1, "{release:?}");
    // the last checkpoint message and the release line name the same epoch (epochs completed)
    let released_at: usize = release
        .split_whitespace()
        .find_map(|w| w.strip_prefix("checkpoint_epoch="))
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no checkpoint_epoch in {release}"));
    let saved_at: usize = log_of(&j)
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("Checkpoint saved after epoch "))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .expect("no checkpoint message");
    assert_eq!(saved_at, released_at, "{:?}", log_of(&j));
    assert_eq!(j.status, JobStatus::RUNNING, "a handed-back job waits for the next worker");
    assert!(models(&world).await.iter().all(|(n, _)| n != "handed-back"));

    // the next worker takes it at once (no lease wait) and resumes from the checkpoint
    let mut second = start_worker_with(&mock.api_url, &world, "second", dir.path(), &long_lease);
    let t1 = Instant::now();
    loop {
        let j = world.user.jobs().get(&job.id).await.unwrap();
        if round_owners(&j).iter().any(|(r, w)| *r == 2 && w == "second") {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "the second worker did not take the handed-back job at once: {:?}",
            log_of(&j)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = loop {
        assert!(t1.elapsed() < Duration::from_secs(120), "the second worker did not finish the job");
        let j = world.user.jobs().get(&job.id).await.unwrap();
        if j.status.is_terminal() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert_eq!(done.status, JobStatus::SUCCESS, "{:?}", log_of(&done));
    let resumed = format!("Resuming from the checkpoint after epoch {released_at}");
    assert!(log_of(&done).iter().any(|l| l.starts_with(&resumed)), "{resumed}: {:?}", log_of(&done));
    assert_eq!(models(&world).await.iter().filter(|(n, _)| n == "handed-back").count(), 1);
    second.child.kill().unwrap();
    let _ = second.child.wait();
}
