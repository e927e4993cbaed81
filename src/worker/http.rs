//! The operations endpoint of `serve`: `/healthz` (Girder reachable, training device usable,
//! queue polls succeeding) and `/metrics` (Prometheus text).
//!
//! `/healthz` answers from the worker's last known state and never waits on Girder or the
//! device: a probe that called Girder inline waited `timeout_s x (max_retries + 1)` while
//! Girder hung, and an orchestrator's probe gives up long before that. A background task
//! ([`Probes`]) checks Girder (`GET /system/version`) and the device every `every`, each check cut
//! off after `timeout` (a hanging Girder is reported as "no answer within ..." once that has
//! passed); the serve loop records how its queue polls went. The answer is redacted
//! ([`crate::redact`]): it quotes Girder's errors.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tch::Device;
use tokio_util::sync::CancellationToken;

use super::metrics::WorkerMetrics;
use crate::girder::GirderClient;

#[derive(Clone)]
struct Ops {
    metrics: WorkerMetrics,
    health: Health,
}

/// What `/healthz` reports, as last seen: written by the serve loop after each queue poll and by
/// the [`Probes`] task after each check, read by `/healthz`. Girder can answer
/// `/system/version` while every `GET /job/all` fails (a revoked key, a broken jobs plugin), and
/// a worker in that state takes no jobs, so polls are reported apart.
#[derive(Clone)]
pub struct Health {
    /// Never held across an await: every access is a copy in or out.
    state: Arc<Mutex<HealthState>>,
    /// Polls failing for longer than this is `degraded` (a few poll intervals: one failed poll is noise).
    degraded_after: Duration,
}

#[derive(Default)]
struct HealthState {
    /// The first failure of the current run of failed polls: monotonic (for the threshold) and
    /// wall-clock (for the answer).
    failing_since: Option<(Instant, time::OffsetDateTime)>,
    last_poll_error: Option<String>,
    /// The last completed Girder check and when it completed; `None` before the first.
    girder: Option<(Result<String, String>, Instant)>,
    device: Option<(Result<String, String>, Instant)>,
}

impl Health {
    pub fn new(degraded_after: Duration) -> Health {
        Health { state: Arc::default(), degraded_after }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A poll succeeded: healthy again.
    pub fn poll_succeeded(&self) {
        let mut st = self.state();
        st.failing_since = None;
        st.last_poll_error = None;
    }

    /// A poll failed with `error`.
    pub fn poll_failed(&self, error: &str) {
        let mut st = self.state();
        st.failing_since.get_or_insert_with(|| (Instant::now(), time::OffsetDateTime::now_utc()));
        st.last_poll_error = Some(error.to_string());
    }

    fn girder_checked(&self, result: Result<String, String>) {
        self.state().girder = Some((result, Instant::now()));
    }

    fn device_checked(&self, result: Result<String, String>) {
        self.state().device = Some((result, Instant::now()));
    }

    /// The `/healthz` answer: status code and body, from the state alone.
    pub fn report(&self) -> (StatusCode, Value) {
        let st = self.state();
        let polls = match st.failing_since {
            Some((since, wall)) if since.elapsed() > self.degraded_after => {
                let wall = wall.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                Some(json!({
                    "ok": false,
                    "error": st.last_poll_error,
                    "failing_since": wall,
                    "failing_for_s": since.elapsed().as_secs_f64(),
                }))
            }
            _ => None,
        };
        let checked = |c: &Option<(Result<String, String>, Instant)>, key: &str| match c {
            None => (None, json!({"ok": false, "error": "not checked yet"})),
            Some((Ok(v), at)) => {
                (Some(true), json!({"ok": true, key: v, "checked_s_ago": at.elapsed().as_secs_f64()}))
            }
            Some((Err(e), at)) => {
                (Some(false), json!({"ok": false, "error": e, "checked_s_ago": at.elapsed().as_secs_f64()}))
            }
        };
        let (girder_ok, girder) = checked(&st.girder, "version");
        let (device_ok, device) = checked(&st.device, "device");
        let status = match (girder_ok, device_ok, &polls) {
            (Some(false), _, _) | (_, Some(false), _) => "unhealthy",
            (None, _, _) | (_, None, _) => "starting",
            (Some(true), Some(true), Some(_)) => "degraded",
            (Some(true), Some(true), None) => "ok",
        };
        let mut body = json!({
            "status": status,
            "polls": polls.unwrap_or_else(|| json!({"ok": true})),
            "girder": girder,
            "device": device,
        });
        crate::redact::json(&mut body);
        let code = if status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (code, body)
    }
}

/// What the background task checks, how often, and how long one check may take.
pub struct Probes {
    pub client: GirderClient,
    pub device: Device,
    pub every: Duration,
    pub timeout: Duration,
}

impl Probes {
    /// Checks Girder and the device until `stop`, recording each result in `health`.
    async fn run(self, health: Health, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = self.check(&health) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// One check of Girder and one of the device, side by side, each within `timeout`.
    async fn check(&self, health: &Health) {
        let girder = async {
            let result = match tokio::time::timeout(self.timeout, self.client.system_version()).await {
                Ok(Ok(version)) => Ok(version),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("Girder did not answer GET system/version within {:?}", self.timeout)),
            };
            health.girder_checked(result);
        };
        let device = async {
            let d = self.device;
            let probe = tokio::task::spawn_blocking(move || crate::device::probe(d));
            let result = match tokio::time::timeout(self.timeout, probe).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => {
                    Err(format!("the device did not finish a tiny computation within {:?}", self.timeout))
                }
            };
            health.device_checked(result);
        };
        tokio::join!(girder, device);
    }
}

/// Binds `listen` (port 0: any free port), starts the probes and serves until `shutdown`;
/// returns the bound address and the task, which the caller awaits before exiting (requests in
/// flight finish, the probes stop).
pub async fn start(
    listen: &str,
    metrics: WorkerMetrics,
    health: Health,
    probes: Probes,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(Ops { metrics, health: health.clone() });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let watching = probes.run(health, shutdown.clone());
        let (_, ()) = tokio::join!(server, watching);
    });
    Ok((addr, task))
}

async fn healthz(State(ops): State<Ops>) -> impl IntoResponse {
    let (code, body) = ops.health.report();
    (code, axum::Json(body))
}

async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ops.metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_comes_from_the_recorded_state() {
        let h = Health::new(Duration::ZERO);
        let (code, body) = h.report();
        assert_eq!((code, body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("starting")));
        h.girder_checked(Ok("5.0.21".into()));
        h.device_checked(Ok("cpu".into()));
        let (code, body) = h.report();
        assert_eq!((code, body["status"].as_str()), (StatusCode::OK, Some("ok")), "{body}");
        assert_eq!(body["girder"]["version"], "5.0.21");
        h.poll_failed("GET job/all: Girder answered 500");
        std::thread::sleep(Duration::from_millis(2));
        let (code, body) = h.report();
        assert_eq!((code, body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("degraded")));
        assert!(body["polls"]["error"].as_str().is_some_and(|e| e.contains("500")), "{body}");
        h.girder_checked(Err("no answer".into()));
        assert_eq!(h.report().1["status"], "unhealthy");
        h.poll_succeeded();
        h.girder_checked(Ok("5.0.21".into()));
        assert_eq!(h.report().0, StatusCode::OK);
    }
}
