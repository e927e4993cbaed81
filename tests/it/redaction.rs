//! Issue 26, problem 2: secrets never leave the process. A Girder (or a proxy) that echoes the
//! request in its error bodies (`Bad token <token> for /api/v1/api_key/token?key=<key>`, the
//! mock's `echo` fault) must not put the user's token, the service API key, the tokens it is
//! exchanged for, or the password of an API URL into the one-shot stdout lines, the log, the
//! Girder job log or `/healthz`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::girder_seed::fault;
use super::helpers::{bin, tempdir};
use super::worker_queue::{log_of, sigterm, start_worker_with, submit, wait_exit, world};
use cellpose_train_worker::girder::JobStatus;

/// `api_url` with a user and password in it, as some deployments write it.
fn with_userinfo(api_url: &str, password: &str) -> String {
    api_url.replacen("http://", &format!("http://svc-user:{password}@"), 1)
}

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} leaks `{s}`:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_oneshot_compute_against_an_echoing_girder_prints_and_logs_no_secret() {
    let (mock, world) = world().await;
    let password = "url-password-4d1f9";
    // every read of the dataset folder (with the user's token) is answered by an echo
    let folder = format!("^/api/v1/folder/{}$", world.dataset_id);
    fault(&mock, json!({"method": "GET", "path": folder, "count": 100, "status": 400, "echo": true})).await;
    let dir = tempdir();
    let cfg = dir.path().join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    let params = json!({"workerInterface": cellpose_train_worker::demo::seed::interface_values(&world.base_model, "echoed", 1)});
    let out = bin()
        .args(["--apiUrl", &with_userinfo(&mock.api_url, password), "--token", world.user_token.expose()])
        .args(["--request", "compute", "--datasetId", &world.dataset_id, "--parameters", &params.to_string()])
        .arg("--config")
        .arg(&cfg)
        .env("CPW_TRAINING__DEVICE", "cpu")
        .env("CPW_TRAINING__MIN_EPOCHS", "1")
        .env("CPW_GIRDER__MAX_RETRIES", "0")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    // the echo reached both outputs, with the token taken out
    assert!(stdout.contains("Bad token *** for /api/v1/folder/"), "{stdout}");
    assert!(stderr.contains("Bad token *** for /api/v1/folder/"), "{stderr}");
    let secrets = [world.user_token.expose(), password];
    assert_clean("stdout", &stdout, &secrets);
    assert_clean("stderr", &stderr, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_against_an_echoing_girder_logs_reports_and_answers_no_secret() {
    let (mock, world) = world().await;
    let password = "url-password-93be2";
    // the key exchange, the queue polls and the job's read of its dataset are all echoed
    let spec = |method: &str, path: &str, count: u32, status: u16| json!({"method": method, "path": path, "count": count, "status": status, "echo": true});
    fault(&mock, spec("POST", "^/api/v1/api_key/token$", 2, 500)).await;
    fault(&mock, spec("GET", "^/api/v1/job/all$", 12, 500)).await;
    let folder = format!("^/api/v1/folder/{}$", world.dataset_id);
    fault(&mock, spec("GET", &folder, 100, 400)).await;
    let job = submit(&world, "echoed", 1).await;

    let dir = tempdir();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("CPW_SERVER__LISTEN", listen.as_str()),
        ("CPW_GIRDER__MAX_RETRIES", "0"),
        ("CPW_QUEUE__POLL_INTERVAL_S", "0.2"),
        ("CPW_LOG__FORMAT", "pretty"),
        ("RUST_LOG", "debug"),
    ];
    let mut worker =
        start_worker_with(&with_userinfo(&mock.api_url, password), &world, "r", dir.path(), &env);

    // /healthz while the polls fail: degraded, quoting the echo without the token
    let mut answers = Vec::new();
    let t0 = Instant::now();
    let degraded = loop {
        assert!(t0.elapsed() < Duration::from_secs(30), "never degraded: {answers:?}\n{}", worker.log());
        if let Ok(r) = reqwest::get(format!("http://{listen}/healthz")).await {
            let text = r.text().await.unwrap();
            let body: Value = serde_json::from_str(&text).unwrap();
            answers.push(text);
            if body["polls"]["error"].as_str().is_some_and(|e| e.contains("Bad token")) {
                break body;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        degraded["polls"]["error"].as_str().unwrap().contains("Bad token *** for /api/v1/"),
        "{degraded}"
    );

    // the job fails on its echoed dataset read; its log quotes the echo, redacted
    let t0 = Instant::now();
    let ended = loop {
        let j = world.admin.jobs().get(&job.id).await.unwrap();
        if j.status.is_terminal() {
            break j;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "job did not end:\n{}", worker.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    sigterm(&worker.child);
    assert!(
        wait_exit(&mut worker.child, Duration::from_secs(20)).is_some_and(|s| s.success()),
        "{}",
        worker.log()
    );
    let job_log = log_of(&ended).join("\n");
    assert_eq!(ended.status, JobStatus::ERROR, "{job_log}");
    assert!(job_log.contains("Bad token *** for /api/v1/folder/"), "{job_log}");
    let progress = ended.progress.as_ref().and_then(|p| p.message.clone()).unwrap_or_default();

    let log = worker.log();
    assert!(log.contains("Bad token *** for /api/v1/job/all"), "the poll's echo is logged:\n{log}");
    assert!(log.contains("api_key/token?key=***"), "the key exchange's echo is logged:\n{log}");
    assert!(
        log.contains("svc-user") || log.contains("***@"),
        "the API URL is logged, its password masked:\n{log}"
    );
    let secrets = [world.admin_api_key.expose(), world.user_token.expose(), password];
    assert_clean("the worker log", &log, &secrets);
    assert_clean("the job log", &job_log, &secrets);
    assert_clean("the job's progress message", &progress, &secrets);
    for a in &answers {
        assert_clean("/healthz", a, &secrets);
    }
}
