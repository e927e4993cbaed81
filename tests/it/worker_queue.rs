//! The queue worker as deployed: real `serve` processes against the mock Girder (in this test
//! process), jobs submitted through the REST API as the platform does, and the faults a
//! deployment meets: a worker SIGKILLed mid-training, a job canceled mid-training, SIGTERM, 5xx
//! answers and dropped connections.

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

pub(super) async fn submit(world: &DemoWorld, name: &str, epochs: usize) -> Job {
    let kwargs = json!({
        "request": "compute",
        "datasetId": world.dataset_id,
        "token": world.user_token.expose(),
        "parameters": {"workerInterface": interface_values(&world.base_model, name, epochs)}
    });
    let new = NewJob {
        title: name.into(),
        job_type: "cellpose_train".into(),
        kwargs: Some(kwargs),
        ..Default::default()
    };
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

impl Worker {
    /// What the worker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start_worker(mock: &MockHandle, world: &DemoWorld, id: &str, dir: &std::path::Path) -> Worker {
    start_worker_with(&mock.api_url, world, id, dir, &[])
}

/// A `serve` process against the Girder at `api_url` with the seeded service account, fast
/// polls and heartbeats, a 4 s lease and checkpoints every 2 epochs; `env` adds or overrides
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

fn sigterm(child: &Child) {
    let ok = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// Waits for a child to exit, up to `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn log_of(job: &Job) -> Vec<String> {
    job.log.clone().unwrap_or_default()
}

fn claims(job: &Job) -> Vec<String> {
    log_of(job).into_iter().filter(|l| l.contains("[cellpose-train-worker] claim")).collect()
}

fn worker_of(claim: &str) -> String {
    claim.split_whitespace().find_map(|w| w.strip_prefix("worker=")).unwrap_or_default().to_string()
}

fn round_of(claim: &str) -> u64 {
    claim.split_whitespace().find_map(|w| w.strip_prefix("round=")).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The owner of each round by the claim rule: the first claim line of the round, in log order
/// (later claimants of the same round lost and backed off).
fn round_owners(job: &Job) -> Vec<(u64, String)> {
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

pub(super) async fn models(world: &DemoWorld) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for item in store::list_user_models(&world.user, &world.user_id).await.unwrap() {
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
    let names: Vec<String> = (0..6).map(|i| format!("queue-model-{i}")).collect();
    let mut jobs = Vec::new();
    for n in &names {
        jobs.push(submit(&world, n, 40).await);
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

/// Issue 14: a job that crashes workers must not crash the next one. Four queued jobs, two
/// workers: one job's base model is the crafted 2^40 x stride-0 file, one job already took down
/// two workers (its log holds their claim and attempt lines and nothing after, what a SIGKILLed or
/// aborted worker leaves), one job carries another user's token. Each of those ends ERROR with a
/// line that says why, within at most two attempts; the good job still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_pills_end_error_within_two_attempts_and_the_other_jobs_still_succeed() {
    use bytes::Bytes;
    use cellpose_train_worker::girder::{Auth, NewUser, Secret};

    let (mock, world) = world().await;
    let dir = tempdir();
    let crafted = super::hostile::crafted_model(&[1 << 40], &[0], 1, &[0; 4], false);
    store::upload_model(&world.user, &world.user_id, "crafted", Bytes::from(crafted), "test").await.unwrap();

    let with_base = |name: &str, base: &str, token: &str| {
        json!({
            "request": "compute",
            "datasetId": world.dataset_id,
            "token": token,
            "parameters": {"workerInterface": interface_values(base, name, 1)}
        })
    };
    let submit_kwargs = |name: String, kwargs: Value| {
        let user = world.user.clone();
        let creator = world.creator.clone();
        async move {
            let new = NewJob {
                title: name,
                job_type: "cellpose_train".into(),
                kwargs: Some(kwargs),
                ..Default::default()
            };
            let job = creator.jobs().create(&new).await.unwrap();
            let queued = JobUpdate { status: Some(JobStatus::QUEUED), ..Default::default() };
            user.jobs().update(&job.id, &queued).await.unwrap();
            job
        }
    };
    let token = world.user_token.expose().to_string();
    let from_crafted =
        submit_kwargs("from-crafted".into(), with_base("from-crafted", "crafted", &token)).await;

    // a job two workers died on: RUNNING, each marker in its own PUT as the workers wrote them
    let pill = submit_kwargs("pill".into(), with_base("pill", &world.base_model, &token)).await;
    let running = JobUpdate { status: Some(JobStatus::RUNNING), ..Default::default() };
    world.admin.jobs().update(&pill.id, &running).await.unwrap();
    for (round, w) in [(1, "dead-1"), (2, "dead-2")] {
        for line in [
            format!("[cellpose-train-worker] claim round={round} worker={w} nonce=0000000{round}"),
            format!("[cellpose-train-worker] attempt round={round} worker={w}"),
            format!("{{\"progress\": 0.05, \"title\": \"Loading\", \"info\": \"round {round}\"}}"),
        ] {
            let update = JobUpdate { log: Some(format!("{line}\n")), ..Default::default() };
            world.admin.jobs().update(&pill.id, &update).await.unwrap();
        }
    }

    // another user's token in a job the first user owns
    let anonymous = GirderClient::new(GirderConfig::new(mock.api_url.clone()), Auth::Anonymous).unwrap();
    let mallory = NewUser {
        login: "mallory".into(),
        email: "mallory@example.org".into(),
        first_name: "Mallory".into(),
        last_name: "Test".into(),
        password: Secret::new("mallory-password-1"),
    };
    let (_, other_token) = anonymous.users().create(&mallory).await.unwrap();
    let other_token = other_token.expect("an anonymous POST /user logs the new user in");
    let foreign =
        submit_kwargs("foreign".into(), with_base("foreign", &world.base_model, other_token.expose())).await;
    let good = submit_kwargs("good".into(), with_base("good", &world.base_model, &token)).await;

    let mut workers: Vec<Worker> =
        ["p0", "p1"].iter().map(|id| start_worker(&mock, &world, id, dir.path())).collect();
    let ids = [&from_crafted.id, &pill.id, &foreign.id, &good.id];
    let t0 = Instant::now();
    let done = loop {
        let mut jobs = Vec::new();
        for id in ids {
            jobs.push(world.admin.jobs().get(id).await.unwrap());
        }
        if jobs.iter().all(|j| [JobStatus::SUCCESS, JobStatus::ERROR].contains(&j.status)) {
            break jobs;
        }
        for w in &mut workers {
            assert!(
                w.child.try_wait().unwrap().is_none(),
                "worker {} died: {}",
                w.id,
                std::fs::read_to_string(&w.log).unwrap()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "jobs did not end: {:?}",
            jobs.iter().map(|j| (&j.title, j.status)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for w in &mut workers {
        assert!(w.child.try_wait().unwrap().is_none(), "worker {} crashed", w.id);
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
    let attempts = |j: &Job| {
        log_of(j)
            .iter()
            .flat_map(|e| e.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| l.contains("] attempt round="))
            .count()
    };
    let text = |j: &Job| log_of(j).join("\n");
    let [crafted_job, pill_job, foreign_job, good_job] = [&done[0], &done[1], &done[2], &done[3]];
    assert_eq!(crafted_job.status, JobStatus::ERROR, "{}", text(crafted_job));
    assert!(text(crafted_job).contains("4398046511104 bytes"), "{}", text(crafted_job));
    assert!(attempts(crafted_job) <= 2, "{}", text(crafted_job));
    assert_eq!(pill_job.status, JobStatus::ERROR, "{}", text(pill_job));
    assert!(
        text(pill_job).contains("this job crashed 2 workers: dead-1 (round 1), dead-2 (round 2)"),
        "{}",
        text(pill_job)
    );
    assert_eq!(attempts(pill_job), 2, "no third attempt: {}", text(pill_job));
    assert_eq!(foreign_job.status, JobStatus::ERROR, "{}", text(foreign_job));
    assert!(text(foreign_job).contains("belongs to user mallory"), "{}", text(foreign_job));
    assert_eq!(good_job.status, JobStatus::SUCCESS, "{}", text(good_job));
    let names: Vec<String> = models(&world).await.into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"good".to_string())
            && !names.iter().any(|n| n == "foreign" || n == "pill" || n == "from-crafted"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_degraded_while_queue_polls_fail_and_ok_again_after_one_succeeds() {
    use cellpose_train_worker::worker;
    let (mock, world) = world().await;
    // a free port for the ops endpoint, known before serve starts
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut settings = cellpose_train_worker::config::Settings::default();
    settings.girder.api_url = mock.api_url.clone();
    settings.girder.api_key = Some(world.admin_api_key.clone());
    settings.girder.max_retries = 0;
    settings.training.device = "cpu".parse().unwrap();
    settings.queue.poll_interval_s = 0.2;
    settings.server.listen = format!("127.0.0.1:{port}");
    let shutdown = cellpose_train_worker::control::Control::new();
    let opts = worker::ServeOptions { worker_id: Some("h".into()), max_jobs: None };
    let serving = tokio::spawn(worker::serve(settings, opts, shutdown.clone()));
    let health = || async move {
        match reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await {
            Ok(r) => Some((r.status().as_u16(), r.json::<Value>().await.unwrap())),
            Err(_) => None, // not listening yet
        }
    };
    let wait_for = |want: u16| async move {
        let t0 = Instant::now();
        loop {
            if let Some((code, body)) = health().await {
                if code == want {
                    return (body, t0.elapsed());
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "/healthz never answered {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (body, _) = wait_for(200).await;
    assert_eq!(body["status"], json!("ok"), "{body}");

    // Girder still answers /system/version, but every poll of the queue fails
    fault(&mock, json!({"method": "GET", "path": "^/api/v1/job/all$", "count": 100000, "status": 500})).await;
    let (body, after) = wait_for(503).await;
    assert_eq!(body["status"], json!("degraded"), "{body}");
    assert_eq!(body["girder"]["ok"], json!(true), "{body}");
    assert!(body["polls"]["error"].as_str().is_some_and(|e| e.contains("500")), "{body}");
    assert!(body["polls"]["failing_since"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    assert!(body["polls"]["failing_for_s"].as_f64().is_some_and(|s| s > 0.9), "{body}");
    assert!(after < Duration::from_secs(5), "degraded only after {after:?}");

    // one successful poll: ok again
    reqwest::Client::new().delete(format!("{}/mock/faults", mock.base_url)).send().await.unwrap();
    let (body, _) = wait_for(200).await;
    assert_eq!((body["status"].clone(), body["polls"]["ok"].clone()), (json!("ok"), json!(true)), "{body}");
    shutdown.shutdown();
    serving.await.unwrap().unwrap();
}
