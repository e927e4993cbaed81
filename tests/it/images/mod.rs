//! The worker images as a lab runs them: both Dockerfile targets, built by `make image`, run by a
//! real Docker daemon against a real Girder 5.0.21 on the host network (the only network these
//! machines allow containers): by hand (`contents`, `oneshot`, `serve`) and as NimbusImage
//! launches them, through girder_worker, Celery and a real broker (`chain`, `girder_worker`).
//!
//! `make test` builds the images and names them in `CPW_IMAGE_CELLPOSE` / `CPW_IMAGE_CELLPOSESAM`
//! (scripts/test.sh); without those variables (a bare `cargo test`) each test says why it does
//! nothing and passes, so that the crate's tests still run where no Docker daemon does.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cellpose_train_worker::demo::seed::DemoWorld;
use serde_json::Value;

mod chain;
mod contents;
mod girder_worker;
mod oneshot;
mod serve;

/// The two images under test.
pub struct Images {
    /// "Cellpose retrain" (the Dockerfile's default target, `cellpose`).
    pub cellpose: String,
    /// "Cellpose-SAM retrain" (target `cellposesam`).
    pub sam: String,
}

/// The images `make test` built, or `None` (with the reason printed) when none were named.
pub fn images(test: &str) -> Option<Images> {
    match (std::env::var("CPW_IMAGE_CELLPOSE"), std::env::var("CPW_IMAGE_CELLPOSESAM")) {
        (Ok(cellpose), Ok(sam)) => Some(Images { cellpose, sam }),
        _ => {
            eprintln!(
                "{test}: not run: no images named (CPW_IMAGE_CELLPOSE/CPW_IMAGE_CELLPOSESAM); \
                 `make test` builds them and runs this test"
            );
            None
        }
    }
}

/// The Docker client (`CPW_DOCKER` overrides `docker`).
pub fn docker() -> Command {
    Command::new(std::env::var("CPW_DOCKER").unwrap_or_else(|_| "docker".into()))
}

/// Runs a docker command to its end; panics with its output when it fails.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker().args(args).output().expect("docker client");
    assert!(
        out.status.success(),
        "docker {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named container, removed (`docker rm -f`) when dropped, whatever the test did.
pub struct Container {
    pub name: String,
}

impl Container {
    /// A unique name for a container of this test process.
    pub fn named(what: &str) -> Container {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Container { name: format!("cpw-test-{what}-{}-{n}", std::process::id()) }
    }

    /// What the container wrote on stdout and stderr so far.
    pub fn logs(&self) -> (String, String) {
        let out = docker().args(["logs", &self.name]).output().expect("docker logs");
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `State.Running` and `State.ExitCode`, or `None` when the container is gone.
    pub fn state(&self) -> Option<(bool, i64)> {
        let out = docker()
            .args(["inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", &self.name])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (running, code) = text.trim().split_once(' ')?;
        Some((running == "true", code.parse().ok()?))
    }

    /// Waits until the container has exited, up to `limit`; its exit code.
    pub fn wait_exit(&self, limit: Duration) -> Option<i64> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some((false, code)) = self.state() {
                return Some(code);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker().args(["rm", "-f", &self.name]).output();
    }
}

/// The `docker run` arguments every test container gets: the host network (Girder listens on
/// 127.0.0.1) and the test's own CPU settings (small patches, epochs from 1), as environment
/// variables like a lab's deployment sets them.
pub fn run_args(container: &Container, detach: bool) -> Vec<String> {
    let mut args: Vec<String> =
        vec!["run".into(), "--name".into(), container.name.clone(), "--network".into()];
    args.push("host".into());
    if detach {
        args.push("-d".into());
    }
    for (k, v) in [
        ("CPW_TRAINING__BSIZE", "32"),
        ("CPW_TRAINING__MIN_EPOCHS", "1"),
        ("OMP_NUM_THREADS", "1"),
        ("RUST_LOG", "info"),
    ] {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args
}

/// The one-shot contract's flags NimbusImage appends to the image's entrypoint.
pub fn oneshot_args(api_url: &str, world: &DemoWorld, request: &str, params: &Value) -> Vec<String> {
    [
        "--apiUrl",
        api_url,
        "--token",
        world.user_token.expose(),
        "--request",
        request,
        "--parameters",
        &params.to_string(),
        "--datasetId",
        &world.dataset_id,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `docker run` of `image` with NimbusImage's one-shot flags, to its end. `mounts` are
/// `host:container[:ro]` volumes.
pub fn run_oneshot(
    image: &str,
    api_url: &str,
    world: &DemoWorld,
    request: &str,
    params: &Value,
    mounts: &[String],
) -> (Container, Output) {
    let c = Container::named(request);
    let mut args = run_args(&c, false);
    for m in mounts {
        args.extend(["-v".to_string(), m.clone()]);
    }
    args.push(image.to_string());
    args.extend(oneshot_args(api_url, world, request, params));
    let out = docker().args(&args).output().expect("docker run");
    (c, out)
}

/// JSON lines of a one-shot's stdout.
pub fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A folder the container's user (uid 10001, not root) can read, holding `files`.
pub fn readable_dir(parent: &Path, name: &str, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, bytes) in files {
        std::fs::write(dir.join(file), bytes).unwrap();
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // the temp dir above is 0700 root: open the path down to this folder for reading
    let mut p = dir.as_path();
    loop {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        if p == parent {
            break;
        }
        p = p.parent().unwrap();
    }
    dir
}
