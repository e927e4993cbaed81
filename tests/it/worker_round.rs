//! One round of the queue in-process, through `Worker::try_execute_job` (no sleeping, the
//! default runtime): what `/metrics` counts is the job the worker ran, and a worker shutdown or a
//! cancel in Girder while the job fetches its images ends it within the grace period or one
//! heartbeat plus one request (issue 13).

use std::time::{Duration, Instant};

use cellpose_train_worker::config::Settings;
use cellpose_train_worker::control::Control;
use cellpose_train_worker::demo::seed::DemoWorld;
use cellpose_train_worker::girder::{GirderClient, GirderConfig, JobStatus};
use cellpose_train_worker::mock_girder::MockHandle;
use cellpose_train_worker::worker::{self, Finish, Worker};
use serde_json::{json, Value};

use super::girder_seed::fault;
use super::worker_queue::{models, submit, world};

fn settings(mock: &MockHandle, world: &DemoWorld) -> Settings {
    let mut settings = Settings::default();
    settings.girder.api_url = mock.api_url.clone();
    settings.girder.api_key = Some(world.admin_api_key.clone());
    settings.training.device = "cpu".parse().unwrap();
    settings.training.bsize = 32;
    settings.training.min_epochs = 1;
    settings.server.listen = String::new();
    settings
}

/// One round of the queue through `Worker::try_execute_job` (no sleeping, the default runtime):
/// the job the worker ran is what `/metrics` counts, and `/healthz` reports Girder.
#[tokio::test]
async fn a_job_run_by_the_worker_is_counted_by_the_ops_endpoint() {
    let (mock, world) = world().await;
    let settings = settings(&mock, &world);
    let job = submit(&world, "metrics-model", 2).await;
    let shutdown = Control::new();
    let opts = worker::ServeOptions { worker_id: Some("m".into()), max_jobs: None };
    let mut w = Worker::new(settings, &opts, &shutdown).unwrap();
    let admin = GirderClient::new(
        GirderConfig::new(mock.api_url.clone()),
        cellpose_train_worker::girder::Auth::Anonymous,
    )
    .unwrap();
    let health = worker::http::Health::new(Duration::from_secs(1));
    let every = Duration::from_millis(50);
    let probes = worker::http::Probes {
        client: admin,
        device: tch::Device::Cpu,
        every,
        timeout: Duration::from_secs(5),
    };
    let (addr, ops) =
        worker::http::start("127.0.0.1:0", w.metrics.clone(), health, probes, shutdown.token().clone())
            .await
            .unwrap();
    let metrics =
        || async move { reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap() };
    let before = metrics().await;
    assert!(!before.contains("cellpose_worker_jobs_total{status=\"success\"}"), "{before}");

    assert_eq!(w.try_execute_job().await.unwrap(), Some((job.id.clone(), Finish::Success)));
    assert_eq!(world.user.jobs().get(&job.id).await.unwrap().status, JobStatus::SUCCESS);
    let text = metrics().await;
    for needle in [
        "cellpose_worker_jobs_total{status=\"success\"} 1",
        // one observation per epoch of the job's 2
        "cellpose_worker_training_step_seconds_count 2",
        "cellpose_worker_queue_wait_seconds_count 1",
        "cellpose_worker_job_duration_seconds_count 1",
        "cellpose_worker_jobs_running 0",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // nothing left to take
    assert_eq!(w.try_execute_job().await.unwrap(), None);

    // /healthz answers from what the probes last found: the next check after a change shows it
    let health_once = |want: u16| async move {
        let t0 = Instant::now();
        loop {
            let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
            if health.status() == want {
                return health.json::<Value>().await.unwrap();
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "/healthz never answered {want}");
            tokio::time::sleep(every).await;
        }
    };
    let body = health_once(200).await;
    assert_eq!(body["girder"]["version"], json!("5.0.21"));
    // Girder gone: unhealthy, and the answer says why
    mock.shutdown().await;
    let body = health_once(503).await;
    assert_eq!(body["girder"]["ok"], json!(false), "{body}");
    assert!(body["girder"]["error"].as_str().is_some_and(|e| e.contains("system/version")), "{body}");
    shutdown.shutdown();
    ops.await.unwrap();
}

#[tokio::test]
async fn serve_runs_a_job_to_max_jobs_and_reports_its_ops_address() {
    let (mock, world) = world().await;
    let mut settings = settings(&mock, &world);
    settings.queue.poll_interval_s = 0.2;
    settings.server.listen = "127.0.0.1:0".into();
    let job = submit(&world, "served-model", 1).await;
    let opts = worker::ServeOptions { worker_id: Some("s".into()), max_jobs: Some(1) };
    let summary = worker::serve(settings, opts, Default::default()).await.unwrap();
    assert_eq!(summary.jobs.get(&job.id).map(String::as_str), Some("success"));
    let addr = summary.ops_addr.expect("ops endpoint");
    assert_ne!(addr.port(), 0);
    // serve drained its endpoint before returning
    assert!(reqwest::get(format!("http://{addr}/metrics")).await.is_err(), "the ops endpoint outlived serve");
}

/// How a test stops the job.
enum Stop {
    /// SIGTERM's effect: the worker's root control shuts down.
    Shutdown,
    /// The user cancels the job in Girder (the heartbeat notices).
    CancelInGirder,
}

/// Runs one queue round in a task; once the job's log says it is loading images (region
/// requests held 30 s by the mock), `stop` is applied. Returns how the job ended and the
/// seconds from the stop to the end of the round.
async fn stop_while_fetching(stop: Stop, grace_s: f64) -> (Finish, f64, Vec<String>, Vec<String>) {
    let (mock, world) = world().await;
    let mut settings = settings(&mock, &world);
    settings.queue.heartbeat_s = 0.5;
    settings.queue.lease_s = 30.0;
    settings.queue.shutdown_grace_s = grace_s;
    let job = submit(&world, "stopped", 50).await;
    fault(&mock, json!({"method": "GET", "path": "/tiles/region$", "count": 1000, "delay_ms": 30000})).await;
    let shutdown = Control::new();
    let opts = worker::ServeOptions { worker_id: Some("w".into()), max_jobs: None };
    let mut w = Worker::new(settings, &opts, &shutdown).unwrap();
    let round = tokio::spawn(async move { w.try_execute_job().await });
    let t0 = Instant::now();
    loop {
        let log = world.user.jobs().get(&job.id).await.unwrap().log.unwrap_or_default();
        if log.iter().any(|l| l.contains("Loading training data")) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the job never reached the fetch: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match stop {
        Stop::Shutdown => shutdown.shutdown(),
        Stop::CancelInGirder => {
            world.user.jobs().cancel(&job.id).await.unwrap();
        }
    }
    let stopped = Instant::now();
    let (id, finish) = round.await.unwrap().unwrap().expect("the round ran the job");
    let after = stopped.elapsed().as_secs_f64();
    assert_eq!(id, job.id);
    reqwest::Client::new().delete(format!("{}/mock/faults", mock.base_url)).send().await.unwrap();
    let done = world.user.jobs().get(&job.id).await.unwrap();
    let models: Vec<String> =
        models(&world).await.into_iter().map(|(name, _)| name).filter(|m| m != "tiny-base").collect();
    (finish, after, done.log.unwrap_or_default(), models)
}

#[tokio::test]
async fn a_shutdown_while_the_job_fetches_hands_it_back_within_the_grace_period() {
    let (finish, after, log, models) = stop_while_fetching(Stop::Shutdown, 5.0).await;
    assert_eq!(finish, Finish::HandedBack, "{log:?}");
    assert!(after < 5.0, "took {after:.2} s, the grace is 5 s");
    assert!(log.iter().any(|l| l.contains("[cellpose-train-worker] release")), "{log:?}");
    assert!(models.is_empty(), "{models:?}");
}

#[tokio::test]
async fn a_cancel_in_girder_while_the_job_fetches_ends_it_within_a_heartbeat_and_a_request() {
    let (finish, after, log, models) = stop_while_fetching(Stop::CancelInGirder, 30.0).await;
    assert_eq!(finish, Finish::Canceled, "{log:?}");
    // heartbeat 0.5 s, then the job drops the held request at once
    assert!(after < 2.5, "took {after:.2} s after the cancel");
    assert!(log.iter().any(|l| l.contains("Canceled; nothing was uploaded.")), "{log:?}");
    assert!(models.is_empty(), "{models:?}");
}
