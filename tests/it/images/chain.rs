//! NimbusImage's launch chain, started by the tests: a real broker (Debian's `redis-server` on a
//! free loopback port), a real Girder 5.0.21 whose worker plugin publishes to it, and a
//! girder_worker 5.0.21 Celery worker consuming `celery,cpu,gpu` that runs our images with the
//! local Docker daemon. A user's click is `POST /tool_launch` (tests/real_girder/tool_launch.py).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::real_girder::{girder_python, RealGirder};

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GIRDER_WORKER_DOCKER_RUN_OPTIONS`: extra `docker run` arguments girder_worker adds to every
/// container it starts (JSON of docker-py's `containers.run` keywords).
const RUN_OPTIONS: &str = r#"{"environment": {"CPW_TRAINING__BSIZE": "32", "CPW_TRAINING__MIN_EPOCHS": "1", "OMP_NUM_THREADS": "1"}}"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits for `ready` to hold, up to `limit`; panics with `what` and `log()` otherwise.
fn wait_until(limit: Duration, what: &str, log: impl Fn() -> String, ready: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < limit, "{what} not within {limit:?}:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The running chain; everything stops when it is dropped (the worker first, so it cannot start
/// another container).
pub struct Chain {
    worker: Killed,
    pub girder: RealGirder,
    _broker: Killed,
    worker_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Chain {
    /// Broker, Girder and one Celery worker with `concurrency` processes.
    pub fn start(concurrency: usize) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let broker = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        let broker = Killed(broker);
        let url = format!("redis://127.0.0.1:{port}/0");
        wait_until(Duration::from_secs(20), "redis-server", String::new, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let girder = RealGirder::start_with(&["--broker", &url]);

        // girder_worker as a lab runs it on a node: `celery -A girder_worker.app worker -Q ...`
        let worker_log = dir.path().join("girder_worker.log");
        let celery = girder_python().parent().unwrap().join("celery");
        let worker = Command::new(celery)
            .args(["-A", "girder_worker.app", "worker", "-Q", "celery,cpu,gpu", "-l", "info"])
            .args(["--concurrency", &concurrency.to_string(), "--without-gossip", "--without-mingle"])
            .args(["-n", &format!("cpw-test-{}@%h", std::process::id())])
            .env("GIRDER_WORKER_BROKER", &url)
            .env("GIRDER_WORKER_BACKEND", &url)
            .env("PYTHONWARNINGS", "ignore")
            // girder_worker's Celery accepts pickled messages, so Celery refuses to run as root
            // unless told to; these machines run tests as root (a deployment's node need not)
            .env("C_FORCE_ROOT", "1")
            // what a lab sets for every container this node starts (girder_worker's own knob):
            // here the test's small patches and epochs from 1, as the other image tests use
            .env("GIRDER_WORKER_DOCKER_RUN_OPTIONS", RUN_OPTIONS)
            .current_dir(dir.path())
            .stdout(std::fs::File::create(&worker_log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("girder_worker.err")).unwrap())
            .spawn()
            .expect("girder_worker's celery (scripts/setup.sh installs it in .venv-girder)");
        let chain = Chain { worker: Killed(worker), girder, _broker: broker, worker_log, _dir: dir };
        wait_until(
            Duration::from_secs(60),
            "girder_worker ready",
            || chain.worker_log(),
            || chain.worker_log().contains(" ready."),
        );
        chain
    }

    /// What girder_worker logged (Celery writes to stderr).
    pub fn worker_log(&self) -> String {
        let err = self.worker_log.with_file_name("girder_worker.err");
        std::fs::read_to_string(&self.worker_log).unwrap_or_default()
            + &std::fs::read_to_string(err).unwrap_or_default()
    }

    /// A user's click on a tool: `POST /tool_launch` as the holder of `token`; the Girder job id
    /// and the queue chosen.
    pub async fn launch(&self, token: &str, body: Value) -> (String, String) {
        let resp = reqwest::Client::new()
            .post(format!("{}/tool_launch", self.girder.api_url))
            .header("Girder-Token", token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "tool_launch {status}: {answer}\n{}", self.girder.stderr());
        (answer["jobId"].as_str().unwrap().to_string(), answer["queue"].as_str().unwrap().to_string())
    }

    /// The job document as Girder serves it (status, log, timestamps).
    pub async fn job(&self, token: &str, id: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}/job/{id}", self.girder.api_url))
            .header("Girder-Token", token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until the job reaches one of Girder's end states (SUCCESS 3, ERROR 4, CANCELED 5).
    pub async fn wait_end(&self, token: &str, id: &str, limit: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let job = self.job(token, id).await;
            if matches!(job["status"].as_i64(), Some(3..=5)) {
                return job;
            }
            assert!(
                t0.elapsed() < limit,
                "job {id} not ended within {limit:?}: {job}\n{}",
                self.worker_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every line of a job's log (a log entry is one write of girder_worker's and may hold several).
pub fn log_lines(job: &Value) -> Vec<String> {
    job["log"]
        .as_array()
        .map(|entries| {
            entries.iter().filter_map(Value::as_str).flat_map(|e| e.lines().map(str::to_string)).collect()
        })
        .unwrap_or_default()
}

/// The statuses the job went through, in order, from Girder's `timestamps`.
pub fn statuses(job: &Value) -> Vec<i64> {
    job["timestamps"]
        .as_array()
        .map(|t| t.iter().filter_map(|s| s["status"].as_i64()).collect())
        .unwrap_or_default()
}

/// The body of a `compute` launch of `image` for the dataset with the interface `values`.
pub fn compute(image: &str, dataset_id: &str, values: Value, name: &str) -> Value {
    json!({"image": image, "request": "compute", "datasetId": dataset_id,
           "parameters": {"workerInterface": values}, "name": name})
}
