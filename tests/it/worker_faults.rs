//! Workers against jobs that would crash or stall them: poison pills (a crafted model, a job
//! that already took two workers down, another user's token) end ERROR within two attempts while
//! the good job succeeds; `/healthz` says degraded while queue polls fail.

use std::time::{Duration, Instant};

use cellpose_train_worker::demo::seed::interface_values;
use cellpose_train_worker::girder::{GirderClient, GirderConfig, Job, JobStatus, JobUpdate, NewJob};
use cellpose_train_worker::job::store;
use serde_json::{json, Value};

use super::girder_seed::fault;
use super::helpers::tempdir;
use super::worker_queue::{log_of, models, start_worker, world, Worker};

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

/// In-process `serve` settings against `mock` with 0.2 s polls and the ops endpoint on a free
/// port, known before serve starts (returned with them).
fn ops_settings(
    mock: &cellpose_train_worker::mock_girder::MockHandle,
    world: &cellpose_train_worker::demo::seed::DemoWorld,
) -> (cellpose_train_worker::config::Settings, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut settings = cellpose_train_worker::config::Settings::default();
    settings.girder.api_url = mock.api_url.clone();
    settings.girder.api_key = Some(world.admin_api_key.clone());
    settings.training.device = "cpu".parse().unwrap();
    settings.queue.poll_interval_s = 0.2;
    settings.server.listen = format!("127.0.0.1:{port}");
    (settings, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_degraded_while_queue_polls_fail_and_ok_again_after_one_succeeds() {
    use cellpose_train_worker::worker;
    let (mock, world) = world().await;
    let (mut settings, port) = ops_settings(&mock, &world);
    settings.girder.max_retries = 0;
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

/// Issue 26, problem 5: `/healthz` answers from the worker's last known state, never by asking
/// Girder inline. Once every Girder request hangs (30 s), each answer still comes at once; after
/// the background check's timeout (the Girder request timeout, 2 s here) it says Girder does not
/// answer. Inline checks waited timeout x (retries + 1) = 6 s per probe here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_at_once_from_the_last_known_state_while_girder_hangs() {
    use cellpose_train_worker::worker;
    let (mock, world) = world().await;
    let (mut settings, port) = ops_settings(&mock, &world);
    settings.girder.timeout_s = 2.0;
    settings.girder.max_retries = 2;
    let shutdown = cellpose_train_worker::control::Control::new();
    let opts = worker::ServeOptions { worker_id: Some("hang".into()), max_jobs: None };
    let serving = tokio::spawn(worker::serve(settings, opts, shutdown.clone()));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let health = || async {
        let t0 = Instant::now();
        let r = http.get(format!("http://127.0.0.1:{port}/healthz")).send().await.ok()?;
        let code = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        Some((code, body, t0.elapsed()))
    };
    let t0 = Instant::now();
    while health().await.is_none_or(|(code, _, _)| code != 200) {
        assert!(t0.elapsed() < Duration::from_secs(20), "/healthz never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Girder hangs: every request waits 30 s before it is handled
    fault(&mock, json!({"path": ".", "count": 1_000_000, "delay_ms": 30_000})).await;
    let hung = Instant::now();
    let mut times = Vec::new();
    let mut said_no_answer = None;
    while hung.elapsed() < Duration::from_secs(5) {
        let (code, body, took) = health().await.expect("/healthz answers");
        assert!(took < Duration::from_secs(1), "an answer waited {took:?} on Girder: {body}");
        times.push(took);
        if body["girder"]["ok"] == json!(false) && said_no_answer.is_none() {
            assert_eq!((code, body["status"].as_str()), (503, Some("unhealthy")), "{body}");
            let error = body["girder"]["error"].as_str().unwrap_or_default();
            assert!(error.contains("did not answer GET system/version within 2s"), "{body}");
            said_no_answer = Some(hung.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    times.sort();
    let (median, slowest) = (times[times.len() / 2], times[times.len() - 1]);
    eprintln!(
        "/healthz while Girder hangs: {} answers, median {:.1} ms, slowest {:.1} ms; unhealthy after {:.2} s",
        times.len(),
        median.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3,
        said_no_answer.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN)
    );
    let after = said_no_answer.expect("/healthz never said Girder does not answer");
    assert!(after < Duration::from_secs(5), "{after:?}");
    reqwest::Client::new().delete(format!("{}/mock/faults", mock.base_url)).send().await.unwrap();
    shutdown.shutdown();
    serving.await.unwrap().unwrap();
}
