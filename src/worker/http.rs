//! The operations endpoint of `serve`: `/healthz` (Girder reachable, training device usable) and
//! `/metrics` (Prometheus text).

use std::net::SocketAddr;

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
}

/// Binds `listen` (port 0: any free port) and serves until `shutdown`; returns the bound address.
pub async fn start(
    listen: &str,
    client: GirderClient,
    device: Device,
    metrics: WorkerMetrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(Ops { client, device, metrics });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    });
    Ok(addr)
}

async fn healthz(State(ops): State<Ops>) -> impl IntoResponse {
    let girder = ops.client.system_version().await;
    let device = ops.device;
    let device_ok = tokio::task::spawn_blocking(move || crate::device::probe(device))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let ok = girder.is_ok() && device_ok.is_ok();
    let body = json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "girder": match &girder { Ok(v) => json!({"ok": true, "version": v}), Err(e) => json!({"ok": false, "error": e.to_string()}) },
        "device": match &device_ok { Ok(d) => json!({"ok": true, "device": d}), Err(e) => json!({"ok": false, "error": e}) },
    });
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body))
}

async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ops.metrics.encode())
}
