//! The client handle and the one place where requests are sent: authentication, timeouts,
//! retries, error mapping and request logging all live here, so the per-resource files only say
//! which endpoint they call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use super::auth::{Auth, AuthToken, Issued, Secret};
use super::error::GirderError;
use super::path::ApiPath;
use super::retry::RetryPolicy;

/// Settings for a [`GirderClient`].
#[derive(Debug, Clone)]
pub struct GirderConfig {
    /// The REST root, e.g. `https://girder.example.org/api/v1`.
    pub api_url: String,
    /// Limit for one request (connect, send, answer). Streaming downloads apply it per read.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Bytes per upload chunk. Girder refuses non-final chunks under its
    /// `core.upload_minimum_chunk_size` (5 MiB by default), so keep this at or above it.
    pub upload_chunk_size: usize,
    /// Lifetime to ask for when exchanging an API key (days); `None` takes the key's own.
    pub token_duration_days: Option<f64>,
}

/// 16 MiB: above Girder's 5 MiB minimum, small enough to resend cheaply after a failure.
pub const DEFAULT_CHUNK_SIZE: usize = 16 * 1024 * 1024;

impl GirderConfig {
    pub fn new(api_url: impl Into<String>) -> Self {
        GirderConfig {
            api_url: api_url.into(),
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            upload_chunk_size: DEFAULT_CHUNK_SIZE,
            token_duration_days: None,
        }
    }
}

/// An async Girder client. Cheap to clone: clones share one connection pool and one token.
#[derive(Clone)]
pub struct GirderClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    http: reqwest::Client,
    pub(crate) config: GirderConfig,
    base: reqwest::Url,
    auth: Auth,
    /// The token an API key was exchanged for. Behind an async mutex so that concurrent calls
    /// that find it stale wait for one exchange instead of each starting their own.
    issued: tokio::sync::Mutex<Option<Issued>>,
}

impl std::fmt::Debug for GirderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GirderClient")
            .field("api_url", &self.inner.config.api_url)
            .field("auth", &self.inner.auth)
            .finish()
    }
}

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Retry {
    /// GET/PUT/DELETE and other calls that can be repeated safely.
    Idempotent,
    /// Non-idempotent POSTs: only retried when the connection was never made, so the server
    /// cannot have acted on them.
    IfNotSent,
}

pub(crate) enum Body {
    None,
    Form(Vec<(String, String)>),
    Json(serde_json::Value),
    Bytes(Bytes),
}

/// One request to the API, relative to `api_url`.
pub(crate) struct Call {
    pub method: Method,
    /// Where the request goes; [`Call::path`] is its text for logs and errors.
    pub segments: ApiPath,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Body,
    pub retry: Retry,
    /// `None`: the configured timeout (for streamed bodies it bounds each read, not the whole).
    pub timeout: Option<Duration>,
    pub auth: bool,
    pub basic: Option<(String, Secret)>,
}

impl Call {
    pub fn new(method: Method, path: impl Into<ApiPath>) -> Call {
        let retry = if method == Method::POST { Retry::IfNotSent } else { Retry::Idempotent };
        let segments = path.into();
        Call {
            method,
            path: segments.to_string(),
            segments,
            query: Vec::new(),
            body: Body::None,
            retry,
            timeout: None,
            auth: true,
            basic: None,
        }
    }
    pub fn get(path: impl Into<ApiPath>) -> Call {
        Call::new(Method::GET, path)
    }
    pub fn post(path: impl Into<ApiPath>) -> Call {
        Call::new(Method::POST, path)
    }
    pub fn put(path: impl Into<ApiPath>) -> Call {
        Call::new(Method::PUT, path)
    }
    pub fn delete(path: impl Into<ApiPath>) -> Call {
        Call::new(Method::DELETE, path)
    }
    pub fn query(mut self, key: &str, value: impl ToString) -> Call {
        self.query.push((key.to_string(), value.to_string()));
        self
    }
    pub fn query_opt(self, key: &str, value: Option<impl ToString>) -> Call {
        match value {
            Some(v) => self.query(key, v),
            None => self,
        }
    }
    pub fn form(mut self, key: &str, value: impl ToString) -> Call {
        match &mut self.body {
            Body::Form(f) => f.push((key.to_string(), value.to_string())),
            _ => self.body = Body::Form(vec![(key.to_string(), value.to_string())]),
        }
        self
    }
    pub fn json(mut self, value: serde_json::Value) -> Call {
        self.body = Body::Json(value);
        self
    }
    pub fn bytes(mut self, data: Bytes) -> Call {
        self.body = Body::Bytes(data);
        self
    }
    /// Marks a POST as safe to repeat (e.g. exchanging an API key for a token).
    pub fn idempotent(mut self) -> Call {
        self.retry = Retry::Idempotent;
        self
    }
    pub fn anonymous(mut self) -> Call {
        self.auth = false;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Call {
        self.timeout = Some(t);
        self
    }
}

/// A successful answer, read in full.
pub(crate) struct Fetched {
    pub body: Bytes,
}

impl GirderClient {
    /// A client for `config.api_url` authenticating with `auth`. Nothing is sent yet.
    pub fn new(config: GirderConfig, auth: Auth) -> Result<GirderClient, GirderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .read_timeout(config.timeout)
            .user_agent(concat!("cellpose-train-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GirderError::Invalid(format!("could not build the HTTP client: {e}")))?;
        GirderClient::with_http(http, config, auth)
    }

    fn with_http(
        http: reqwest::Client,
        config: GirderConfig,
        auth: Auth,
    ) -> Result<GirderClient, GirderError> {
        let mut root = config.api_url.trim_end_matches('/').to_string();
        root.push('/');
        let base = reqwest::Url::parse(&root).map_err(|e| {
            GirderError::Invalid(format!("Girder API URL `{}` is not a URL: {e}", config.api_url))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(GirderError::Invalid(format!("Girder API URL `{}` must be http(s)", config.api_url)));
        }
        Ok(GirderClient {
            inner: Arc::new(Inner { http, config, base, auth, issued: tokio::sync::Mutex::new(None) }),
        })
    }

    /// A client for the same server and connection pool that acts as the owner of `token`
    /// (e.g. a job owner's token, while the worker's own client lists jobs with its API key).
    pub fn with_token(&self, token: Secret) -> GirderClient {
        let inner = &self.inner;
        GirderClient {
            inner: Arc::new(Inner {
                http: inner.http.clone(),
                config: inner.config.clone(),
                base: inner.base.clone(),
                auth: Auth::Token(token),
                issued: tokio::sync::Mutex::new(None),
            }),
        }
    }

    pub fn config(&self) -> &GirderConfig {
        &self.inner.config
    }

    /// The token this client sends right now (exchanging its API key first when needed), e.g.
    /// to hand to a job. `None` for an anonymous client.
    pub async fn token(&self) -> Result<Option<Secret>, GirderError> {
        match &self.inner.auth {
            Auth::Token(t) => Ok(Some(t.clone())),
            Auth::Anonymous => Ok(None),
            Auth::ApiKey(key) => {
                let mut issued = self.inner.issued.lock().await;
                if let Some(i) = issued.as_ref().filter(|i| i.is_fresh(Instant::now())) {
                    return Ok(Some(i.token.clone()));
                }
                let fresh = self.exchange_key(key).await?;
                let fresh = Issued::new(fresh, Instant::now(), OffsetDateTime::now_utc());
                let token = fresh.token.clone();
                *issued = Some(fresh);
                Ok(Some(token))
            }
        }
    }

    async fn exchange_key(&self, key: &Secret) -> Result<AuthToken, GirderError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(rename = "authToken")]
            auth_token: AuthToken,
        }
        let call = Call::post("api_key/token")
            .query("key", key.expose())
            .query_opt("duration", self.inner.config.token_duration_days)
            .anonymous()
            .idempotent();
        let fetched = match self.fetch_with(&call, None).await {
            Err(GirderError::Http { status: 400, message, .. }) => {
                return Err(GirderError::InvalidApiKey { message })
            }
            other => other?,
        };
        tracing::debug!("exchanged the API key for a new Girder token");
        let answer: Answer = decode_json(&call, &fetched.body)?;
        Ok(answer.auth_token)
    }

    /// Sends `call` (retrying per policy) and reads the whole answer.
    pub(crate) async fn fetch(&self, call: &Call) -> Result<Fetched, GirderError> {
        let mut renewed = false;
        loop {
            let token = if call.auth { self.token().await? } else { None };
            match self.fetch_with(call, token.as_ref()).await {
                // A token from an API key may have been revoked or the server restarted: get a
                // new one once, then report whatever happens.
                Err(GirderError::Unauthorized { .. })
                    if !renewed && matches!(self.inner.auth, Auth::ApiKey(_)) =>
                {
                    *self.inner.issued.lock().await = None;
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    /// [`Self::fetch`] and decode the body as JSON.
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: Call) -> Result<T, GirderError> {
        let fetched = self.fetch(&call).await?;
        decode_json(&call, &fetched.body)
    }

    async fn fetch_with(&self, call: &Call, token: Option<&Secret>) -> Result<Fetched, GirderError> {
        let started = Instant::now();
        let mut retry = 0;
        loop {
            let (err, hint) = match self.send_once(call, token, true).await {
                Ok(resp) => {
                    // a body cut short fails without a URL in reqwest's error: give it the request's
                    let url = resp.url().clone();
                    match resp.bytes().await {
                        Ok(body) => return Ok(Fetched { body }),
                        Err(e) => (
                            GirderError::transport(
                                call.method.as_str(),
                                &call.path,
                                e.with_url(url),
                                self.timeout(call),
                            ),
                            None,
                        ),
                    }
                }
                Err(e) => e,
            };
            let wait = self.retry_wait(call, &err, retry, started.elapsed(), hint).ok_or(err)?;
            retry += 1;
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends `call` and returns the response once its headers arrived with a 2xx status,
    /// retrying per policy until then; the body is left for the caller to stream.
    pub(crate) async fn open_stream(&self, call: &Call) -> Result<reqwest::Response, GirderError> {
        let token = if call.auth { self.token().await? } else { None };
        let started = Instant::now();
        let mut retry = 0;
        loop {
            let (err, hint) = match self.send_once(call, token.as_ref(), false).await {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            let wait = self.retry_wait(call, &err, retry, started.elapsed(), hint).ok_or(err)?;
            retry += 1;
            tokio::time::sleep(wait).await;
        }
    }

    /// The wait before retry number `retry`, or `None` when `err` must be returned.
    fn retry_wait(
        &self,
        call: &Call,
        err: &GirderError,
        retry: u32,
        elapsed: Duration,
        hint: Option<Duration>,
    ) -> Option<Duration> {
        let allowed = match call.retry {
            Retry::Idempotent => err.is_transient(),
            Retry::IfNotSent => matches!(err, GirderError::Transport { source, .. } if source.is_connect()),
        };
        if !allowed {
            return None;
        }
        let wait = self.inner.config.retry.backoff(retry, elapsed, hint, &mut rand::thread_rng())?;
        tracing::warn!(
            method = %call.method, path = %call.path, retry = retry + 1, wait_ms = wait.as_millis() as u64,
            error.message = %err, "retrying Girder call"
        );
        Some(wait)
    }

    /// The URL of `path`: the API root with each segment appended, escaped.
    fn url(&self, path: &ApiPath) -> Result<reqwest::Url, GirderError> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                GirderError::Invalid(format!("Girder API URL `{}` cannot have a path", self.inner.base))
            })?
            .pop_if_empty()
            .extend(&path.0);
        Ok(url)
    }

    pub(crate) fn timeout(&self, call: &Call) -> Duration {
        call.timeout.unwrap_or(self.inner.config.timeout)
    }

    /// One attempt. `Ok` only for a 2xx answer; an error answer is read and mapped here.
    async fn send_once(
        &self,
        call: &Call,
        token: Option<&Secret>,
        total_timeout: bool,
    ) -> Result<reqwest::Response, (GirderError, Option<Duration>)> {
        let method = call.method.as_str();
        let timeout = self.timeout(call);
        let url = self.url(&call.segments).map_err(|e| (e, None))?;
        let mut rb = self.inner.http.request(call.method.clone(), url).query(&call.query);
        if total_timeout {
            rb = rb.timeout(timeout);
        }
        if let Some(token) = token {
            rb = rb.header("Girder-Token", token.expose());
        }
        if let Some((user, password)) = &call.basic {
            rb = rb.basic_auth(user, Some(password.expose()));
        }
        rb = match &call.body {
            // Girder 5 (behind uvicorn/starlette) answers 411 Length Required to a POST/PUT that
            // has neither a body nor a Content-Length, as Python's requests never sends; say 0
            // on every body-less request so no method depends on the server's leniency.
            Body::None => rb.header(reqwest::header::CONTENT_LENGTH, "0"),
            Body::Form(f) => rb.form(f),
            Body::Json(v) => rb.json(v),
            Body::Bytes(b) => {
                rb.header(reqwest::header::CONTENT_TYPE, "application/octet-stream").body(b.clone())
            }
        };
        let started = Instant::now();
        let resp =
            rb.send().await.map_err(|e| (GirderError::transport(method, &call.path, e, timeout), None))?;
        let status = resp.status();
        tracing::debug!(method, path = %call.path, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "girder");
        if status.is_success() {
            return Ok(resp);
        }
        let hint = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.bytes().await.unwrap_or_default();
        Err((GirderError::from_status(method, &call.path, status.as_u16(), &body), hint))
    }
}

pub(crate) fn decode_json<T: DeserializeOwned>(call: &Call, body: &[u8]) -> Result<T, GirderError> {
    serde_json::from_slice(body)
        .map_err(|e| GirderError::decode(call.method.as_str(), &call.path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_with_or_without_slash_joins_paths_below_it() {
        for root in ["http://h:8080/api/v1", "http://h:8080/api/v1/"] {
            let c = GirderClient::new(GirderConfig::new(root), Auth::Anonymous).unwrap();
            assert_eq!(c.inner.base.join("item/abc").unwrap().as_str(), "http://h:8080/api/v1/item/abc");
        }
        assert!(GirderClient::new(GirderConfig::new("ftp://h/api"), Auth::Anonymous).is_err());
        assert!(GirderClient::new(GirderConfig::new("not a url"), Auth::Anonymous).is_err());
    }

    #[test]
    fn ids_are_checked_and_every_segment_is_escaped_into_the_url() {
        let c = GirderClient::new(GirderConfig::new("http://h:8080/api/v1"), Auth::Anonymous).unwrap();
        let url = |p: &ApiPath| c.url(p).unwrap().to_string();
        assert_eq!(url(&ApiPath::from("file/chunk")), "http://h:8080/api/v1/file/chunk");
        let id = ApiPath::id("item", "5F3C9A1B2D4E6F7A8B9C0D1E").unwrap();
        assert_eq!(
            url(&id.clone().then("files")),
            "http://h:8080/api/v1/item/5f3c9a1b2d4e6f7a8b9c0d1e/files"
        );
        // a value segment stays one segment: `/`, `?`, `%` and `..` cannot leave it
        let odd = id.then("../x?y=1%2F");
        assert_eq!(url(&odd), "http://h:8080/api/v1/item/5f3c9a1b2d4e6f7a8b9c0d1e/..%2Fx%3Fy=1%252F");
        for bad in ["../user/me", "5f3c9a1b2d4e6f7a8b9c0d1e?x=1", ".."] {
            let err = GirderError::from(ApiPath::id("folder", bad).unwrap_err());
            assert!(matches!(err, GirderError::InvalidId(_)) && err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn debug_output_hides_the_token() {
        let c = GirderClient::new(GirderConfig::new("http://h/api/v1"), Auth::Token(Secret::new("tok-123")))
            .unwrap();
        let c2 = c.with_token(Secret::new("tok-456"));
        let printed = format!("{c:?} {c2:?}");
        assert!(!printed.contains("tok-") && printed.contains("***"), "{printed}");
    }

    #[test]
    fn posts_are_not_idempotent_unless_marked() {
        assert_eq!(Call::post("file").retry, Retry::IfNotSent);
        assert_eq!(Call::post("api_key/token").idempotent().retry, Retry::Idempotent);
        assert_eq!(Call::put("job/x").retry, Retry::Idempotent);
    }

    /// Reads one request's head from a raw socket and answers `{}`: what went on the wire.
    async fn capture_head(listener: &tokio::net::TcpListener) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the request head ended");
            head.extend_from_slice(&buf[..n]);
        }
        let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        sock.write_all(reply).await.unwrap();
        String::from_utf8_lossy(&head).to_ascii_lowercase()
    }

    #[tokio::test]
    async fn body_less_requests_of_every_method_say_content_length_zero_on_the_wire() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1", listener.local_addr().unwrap());
        let client = GirderClient::new(GirderConfig::new(url), Auth::Anonymous).unwrap();
        for call in [Call::get("a"), Call::post("b"), Call::put("c"), Call::delete("d")] {
            let method = call.method.clone();
            let (head, sent) = tokio::join!(capture_head(&listener), client.fetch(&call));
            sent.unwrap();
            let lengths: Vec<&str> =
                head.lines().filter(|l| l.starts_with("content-length:")).map(str::trim).collect();
            assert_eq!(lengths, ["content-length: 0"], "{method} sent:\n{head}");
        }
        // a request with a body keeps its own length
        let call = Call::post("e").form("k", "v");
        let (head, sent) = tokio::join!(capture_head(&listener), client.fetch(&call));
        sent.unwrap();
        assert!(head.contains("content-length: 3\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_body_cut_short_names_the_url_it_came_from() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1", listener.local_addr().unwrap());
        let mut config = GirderConfig::new(&url);
        config.retry.max_retries = 0;
        let client = GirderClient::new(config, Auth::Anonymous).unwrap();
        let server = async {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await.unwrap();
            // promises 100 bytes, sends 9, hangs up
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"short\":").await.unwrap();
        };
        let call = Call::get("item/abc").query("token", "secret");
        let (_, got) = tokio::join!(server, client.fetch(&call));
        let text = got.err().expect("a short body is an error").to_string();
        assert!(text.contains(&format!("{url}/item/abc")), "{text}");
        assert!(!text.contains("unknown URL") && !text.contains("secret"), "{text}");
    }
}
