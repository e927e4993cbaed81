//! The operations endpoint of `serve`: `/healthz` (Girder reachable, training device usable,
//! queue polls succeeding) and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tch::Device;

use super::metrics::WorkerMetrics;
use crate::girder::GirderClient;

#[derive(Clone)]
struct Ops {
    client: GirderClient,
    device: Device,
    metrics: WorkerMetrics,
    polls: PollHealth,
}

/// How the serve loop's queue polls are going, for `/healthz`: Girder can answer
/// `/system/version` while every `GET /job/all` fails (a revoked key, a broken jobs plugin), and
/// a worker in that state takes no jobs.
#[derive(Clone)]
pub struct PollHealth {
    /// Written by the serve loop after each poll, read by `/healthz`; never held across an await.
    state: Arc<Mutex<PollState>>,
    /// Failing for longer than this is `degraded` (a few poll intervals: one failed poll is noise).
    degraded_after: Duration,
}

#[derive(Default)]
struct PollState {
    /// The first failure of the current run of failures: monotonic (for the threshold) and
    /// wall-clock (for the answer).
    failing_since: Option<(Instant, time::OffsetDateTime)>,
    last_error: Option<String>,
}

impl PollHealth {
    pub fn new(degraded_after: Duration) -> PollHealth {
        PollHealth { state: Arc::default(), degraded_after }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A poll succeeded: healthy again.
    pub fn succeeded(&self) {
        *self.state() = PollState::default();
    }

    /// A poll failed with `error`.
    pub fn failed(&self, error: &str) {
        let mut st = self.state();
        st.failing_since.get_or_insert_with(|| (Instant::now(), time::OffsetDateTime::now_utc()));
        st.last_error = Some(error.to_string());
    }

    /// `Some(json)` when polls have failed for longer than `degraded_after`.
    fn degraded(&self) -> Option<serde_json::Value> {
        let st = self.state();
        let (since, wall) = st.failing_since?;
        let failing_for = since.elapsed();
        (failing_for > self.degraded_after).then(|| {
            let wall = wall.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            json!({"ok": false, "error": st.last_error, "failing_since": wall, "failing_for_s": failing_for.as_secs_f64()})
        })
    }
}

/// Binds `listen` (port 0: any free port) and serves until `shutdown`; returns the bound address
/// and the server task, which the caller awaits before exiting (requests in flight finish).
pub async fn start(
    listen: &str,
    client: GirderClient,
    device: Device,
    metrics: WorkerMetrics,
    polls: PollHealth,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(Ops { client, device, metrics, polls });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    });
    Ok((addr, task))
}

async fn healthz(State(ops): State<Ops>) -> impl IntoResponse {
    let girder = ops.client.system_version().await;
    let device = ops.device;
    let device_ok = tokio::task::spawn_blocking(move || crate::device::probe(device))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let ok = girder.is_ok() && device_ok.is_ok();
    let degraded = ops.polls.degraded();
    let status = match (ok, &degraded) {
        (false, _) => "unhealthy",
        (true, Some(_)) => "degraded",
        (true, None) => "ok",
    };
    let mut body = json!({
        "status": status,
        "polls": degraded.unwrap_or_else(|| json!({"ok": true})),
        "girder": match &girder { Ok(v) => json!({"ok": true, "version": v}), Err(e) => json!({"ok": false, "error": e.to_string()}) },
        "device": match &device_ok { Ok(d) => json!({"ok": true, "device": d}), Err(e) => json!({"ok": false, "error": e}) },
    });
    // the answer quotes Girder's errors
    crate::redact::json(&mut body);
    let code = if status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body))
}

async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ops.metrics.encode())
}
