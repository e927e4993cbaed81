//! The HTTP server: its own accept loop (so a fault can drop a connection without answering,
//! which a plain `axum::serve` cannot), the fault and request-log layer, and shutdown.
//!
//! Shutdown is a value: [`serve`] takes a future and stops accepting when it resolves, then
//! ends the open connections; [`MockHandle::shutdown`] resolves it and waits for the loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use super::faults::{FaultKind, FaultSpec, Faults, Logged};
use super::http::{json_response, ApiError};
use super::routes;
use super::state::{MockConfig, State};

/// Shared by every request.
pub(crate) struct App {
    /// The database. A std mutex: handlers never hold it across an `.await`.
    pub state: Mutex<State>,
    /// Faults and the request log, apart from the state so `/mock` calls never wait on it.
    pub faults: Mutex<Faults>,
    /// `http://host:port`, for URLs Girder puts in documents (`jobInfoSpec.url`).
    pub base_url: String,
}

pub(crate) type Shared = Arc<App>;

impl App {
    /// Locks the state; a handler that panicked while holding it poisons nothing here because
    /// each handler leaves the state consistent before any fallible step.
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running mock, as tests use it.
pub struct MockHandle {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    /// `http://127.0.0.1:PORT/api/v1`
    pub api_url: String,
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl MockHandle {
    /// Stops accepting, closes open connections and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts a mock on `config.addr` (127.0.0.1, a free port, by default) in this runtime.
pub async fn spawn_mock(config: MockConfig) -> std::io::Result<MockHandle> {
    let listener = TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(serve(listener, config, async {
        let _ = rx.await;
    }));
    let base_url = format!("http://{addr}");
    Ok(MockHandle {
        api_url: format!("{base_url}/api/v1"),
        base_url,
        addr,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Serves the mock on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let base_url = format!("http://{}", listener.local_addr()?);
    let app: Shared = Arc::new(App {
        state: Mutex::new(State::new(&config)),
        faults: Mutex::new(Faults::default()),
        base_url,
    });
    let router = routes::router().merge(mock_routes()).with_state(app.clone());
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error.message = %e, "mock Girder: accept failed");
                        continue;
                    }
                };
                let (app, router) = (app.clone(), router.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(app.clone(), router.clone(), req));
                    // A service error (an injected drop) ends the connection without an answer.
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// The error that makes hyper close a connection without answering.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Dropped {}

async fn handle(app: Shared, router: Router, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
    let req = req.map(Body::new);
    let path = req.uri().path().to_string();
    if path.starts_with("/mock/") {
        return Ok(call(router, req).await);
    }
    let method = req.method().as_str().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let token = req.headers().get("girder-token").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut logged = Logged { method: method.clone(), path: path.clone(), query, status: None, fault: None };
    if lacks_length(&req) {
        // refused before any handler (or fault) sees it, as CherryPy does under Girder
        let resp = length_required();
        logged.status = Some(resp.status().as_u16());
        app.faults().log.push(logged);
        return Ok(resp);
    }
    let fault = app.faults().take(&method, &path);
    let outcome = match fault {
        Some(f) if !f.after => match f.kind {
            FaultKind::Status(code) if f.echo => {
                logged.fault = Some("status echo");
                Ok(echoed(code, &token, &path, &logged.query))
            }
            FaultKind::Status(code) => {
                logged.fault = Some("status");
                Ok(injected(code))
            }
            FaultKind::Drop => {
                logged.fault = Some("drop");
                Err(Dropped)
            }
            FaultKind::Delay(d) => {
                logged.fault = Some("delay");
                tokio::time::sleep(d).await;
                Ok(call(router, req).await)
            }
        },
        Some(f) => {
            // handled for real, then the answer is lost or replaced
            let _ = call(router, req).await;
            match f.kind {
                FaultKind::Status(code) => {
                    logged.fault = Some("status after");
                    Ok(if f.echo { echoed(code, &token, &path, &logged.query) } else { injected(code) })
                }
                _ => {
                    logged.fault = Some("drop after");
                    Err(Dropped)
                }
            }
        }
        None => Ok(call(router, req).await),
    };
    logged.status = outcome.as_ref().ok().map(|r| r.status().as_u16());
    app.faults().log.push(logged);
    outcome
}

/// A POST, PUT or PATCH (CherryPy's `methods_with_bodies` under Girder) with neither
/// `Content-Length` nor `Transfer-Encoding`: CherryPy's request body processing raises
/// `HTTPError(411)` before Girder's endpoint runs, so a body-less request must say
/// `Content-Length: 0`.
fn lacks_length(req: &Request<Body>) -> bool {
    use axum::http::{header, Method};
    let has_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    let h = req.headers();
    has_body && !h.contains_key(header::CONTENT_LENGTH) && !h.contains_key(header::TRANSFER_ENCODING)
}

/// `411 Length Required`. Girder renders it with its HTML error page; plain text here carries
/// the same status and reason.
fn length_required() -> Response<Body> {
    let mut resp = Response::new(Body::from("411 Length Required: Client must specify Content-Length."));
    *resp.status_mut() = StatusCode::LENGTH_REQUIRED;
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn call(router: Router, req: Request<Body>) -> Response<Body> {
    match router.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

fn injected(code: u16) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = json!({"message": format!("mock Girder: injected fault {code}"), "type": "mock_fault"});
    let mut resp = json_response(body);
    *resp.status_mut() = status;
    resp
}

/// An error answer that quotes the request back, secrets and all (a careless server or proxy).
fn echoed(code: u16, token: &str, path: &str, query: &str) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({"message": format!("Bad token {token} for {path}?{query}"), "type": "rest"});
    let mut resp = json_response(body);
    *resp.status_mut() = status;
    resp
}

fn mock_routes() -> Router<Shared> {
    Router::new()
        .route("/mock/faults", post(add_fault).delete(clear_faults))
        .route("/mock/requests", get(requests).delete(clear_requests))
}

async fn add_fault(
    axum::extract::State(app): axum::extract::State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response<Body>, ApiError> {
    let spec: FaultSpec =
        serde_json::from_slice(&body).map_err(|e| ApiError::rest(format!("bad fault: {e}")))?;
    let fault = spec.build().map_err(ApiError::rest)?;
    app.faults().add(fault);
    Ok(json_response(json!({"added": true})))
}

async fn clear_faults(axum::extract::State(app): axum::extract::State<Shared>) -> Response<Body> {
    app.faults().clear();
    json_response(Value::Null)
}

async fn requests(axum::extract::State(app): axum::extract::State<Shared>) -> Response<Body> {
    json_response(app.faults().log_json())
}

async fn clear_requests(axum::extract::State(app): axum::extract::State<Shared>) -> Response<Body> {
    app.faults().log.clear();
    json_response(Value::Null)
}
