//! A real Girder 5.0.21 (PyPI girder, girder-jobs, girder-plugin-worker, girder-large-image with
//! the NimbusImage stand-in routes) started by the test that needs it: `tests/real_girder/
//! launcher.py` in `.venv-girder` (made by scripts/setup.sh), on mongomock, a free port and an
//! assetstore in a temp dir. About 2 s to start; each test gets an empty server of its own, so
//! the first user it creates becomes the site admin as on a new deployment.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::helpers::repo_root;

/// The interpreter of the real-Girder environment.
pub fn girder_python() -> PathBuf {
    std::env::var_os("CPW_GIRDER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-girder/bin/python"))
}

/// A running real Girder; stopped (and its files removed) on drop.
pub struct RealGirder {
    /// `http://127.0.0.1:PORT/api/v1`.
    pub api_url: String,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    child: Child,
    /// The launcher exits when this closes, even if the test process dies without dropping us.
    _stdin: ChildStdin,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RealGirder {
    /// Starts a server; panics with its log when it does not come up within 60 s.
    pub fn start() -> RealGirder {
        RealGirder::start_with(&[])
    }

    /// [`RealGirder::start`] with more launcher flags (e.g. `--broker redis://...`).
    pub fn start_with(extra: &[&str]) -> RealGirder {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("girder.log");
        let python = girder_python();
        assert!(
            python.exists(),
            "the real-Girder environment is missing at {}: run scripts/setup.sh (make test does)",
            python.display()
        );
        let mut child = Command::new(&python)
            .arg(repo_root().join("tests/real_girder/launcher.py"))
            .arg("--assetstore")
            .arg(dir.path().join("assetstore"))
            .args(extra)
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start the real Girder launcher");
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let log_out = log.clone();
        std::thread::spawn(move || {
            let mut sink = std::fs::File::create(&log_out).ok();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("GIRDER_URL ") {
                    let _ = tx.send(url.to_string());
                }
                if let Some(f) = sink.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let err_log = dir.path().join("girder.stderr.log");
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            let _ = std::fs::write(err_log, buf);
        });
        let api_url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                let err = std::fs::read_to_string(dir.path().join("girder.stderr.log")).unwrap_or_default();
                panic!("the real Girder did not start:\n{err}");
            }
        };
        let base_url = api_url.trim_end_matches("/api/v1").to_string();
        RealGirder { api_url, base_url, child, _stdin: stdin, log, _dir: dir }
    }

    /// What the server wrote on stderr so far (tracebacks of 500s), for failure messages.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("girder.stderr.log")).unwrap_or_default()
    }

    /// The directory of the filesystem assetstore (files uploaded to this server).
    pub fn assetstore(&self) -> PathBuf {
        self._dir.path().join("assetstore")
    }
}

impl Drop for RealGirder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `PUT /dev_support/local_worker` (launcher-only, admin): whether Girder's `local` Celery queue
/// has a worker (eager mode), which `DELETE /folder` needs.
pub async fn set_local_worker(api_url: &str, admin_token: &str, enabled: bool) {
    let on = if enabled { "true" } else { "false" };
    dev_support_put(api_url, admin_token, "local_worker", ("enabled", on.to_string())).await;
}

/// `PUT /dev_support/<route>?<query>` as the admin, asserting success.
async fn dev_support_put(api_url: &str, admin_token: &str, route: &str, query: (&str, String)) {
    let resp = reqwest::Client::new()
        .put(format!("{api_url}/dev_support/{route}"))
        .query(&[query])
        .header("Girder-Token", admin_token)
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{route} request: {e}"));
    assert!(resp.status().is_success(), "{route}: {}", resp.status());
}

/// `PUT /dev_support/disk_reserve` (launcher-only, admin): the free space, in MB, below which the
/// filesystem assetstore refuses uploads. A reserve larger than the disk makes the disk full.
pub async fn set_disk_reserve(api_url: &str, admin_token: &str, mb: u64) {
    dev_support_put(api_url, admin_token, "disk_reserve", ("mb", mb.to_string())).await;
}
