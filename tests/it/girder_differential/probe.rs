//! Calls to one server, kept as they were seen: what the scenario runs and the comparison reads.

use base64::Engine as _;
use bytes::Bytes;
use reqwest::Method;
use serde_json::Value;

/// What one exchange looked like.
#[derive(Debug, Clone)]
pub struct Seen {
    pub label: String,
    pub status: u16,
    pub json: Option<Value>,
    pub body: Bytes,
    pub total_count: Option<String>,
}

/// A body to send.
pub enum Send<'a> {
    None,
    /// No body and, unlike the client, no `Content-Length` either.
    Bare,
    Form(&'a [(&'a str, String)]),
    Json(Value),
    Bytes(Bytes),
}

/// Runs calls against one server and keeps what it saw.
pub struct Probe {
    http: reqwest::Client,
    api: String,
    pub seen: Vec<Seen>,
}

impl Probe {
    pub fn new(api: &str) -> Probe {
        Probe { http: reqwest::Client::new(), api: api.to_string(), seen: Vec::new() }
    }

    /// A call to make with `method` on `path` (relative to the API root); `label` names it in
    /// the differences. Add a token, a query and a body, then `.await` it.
    pub fn at<'p, 'a>(&'p mut self, label: &'a str, method: Method, path: impl Into<String>) -> Call<'p, 'a> {
        let spec =
            Spec { label, method, path: path.into(), token: None, query: Vec::new(), body: Send::None };
        Call { probe: self, spec }
    }

    pub fn get<'p, 'a>(&'p mut self, label: &'a str, path: impl Into<String>) -> Call<'p, 'a> {
        self.at(label, Method::GET, path)
    }

    pub fn post<'p, 'a>(&'p mut self, label: &'a str, path: impl Into<String>) -> Call<'p, 'a> {
        self.at(label, Method::POST, path)
    }

    pub fn put<'p, 'a>(&'p mut self, label: &'a str, path: impl Into<String>) -> Call<'p, 'a> {
        self.at(label, Method::PUT, path)
    }

    pub fn delete<'p, 'a>(&'p mut self, label: &'a str, path: impl Into<String>) -> Call<'p, 'a> {
        self.at(label, Method::DELETE, path)
    }

    async fn run(&mut self, spec: Spec<'_>) -> Value {
        let Spec { label, method, path, token, query, body } = spec;
        let mut rb = self.http.request(method, format!("{}/{path}", self.api)).query(&query);
        if let Some(t) = token {
            rb = rb.header("Girder-Token", t);
        }
        rb = match body {
            Send::None => rb.header("Content-Length", "0"),
            Send::Bare => rb,
            Send::Form(f) => rb.form(f),
            Send::Json(v) => rb.json(&v),
            Send::Bytes(b) => rb.body(b),
        };
        let resp = rb.send().await.unwrap_or_else(|e| panic!("{label}: {e}"));
        let status = resp.status().as_u16();
        let total_count =
            resp.headers().get("Girder-Total-Count").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.bytes().await.unwrap_or_default();
        let json = serde_json::from_slice::<Value>(&body).ok();
        self.seen.push(Seen { label: label.to_string(), status, json: json.clone(), body, total_count });
        json.unwrap_or(Value::Null)
    }

    pub async fn basic(&mut self, label: &str, login: &str, password: &str) -> Value {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"));
        let resp = self
            .http
            .get(format!("{}/user/authentication", self.api))
            .header("Authorization", format!("Basic {auth}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let json = serde_json::from_slice::<Value>(&body).ok();
        self.seen.push(Seen { label: label.into(), status, json: json.clone(), body, total_count: None });
        json.unwrap_or(Value::Null)
    }
}

/// What a call sends.
struct Spec<'a> {
    label: &'a str,
    method: Method,
    path: String,
    token: Option<String>,
    query: Vec<(String, String)>,
    body: Send<'a>,
}

/// A call being put together (see [`Probe::at`]); awaiting it makes it.
pub struct Call<'p, 'a> {
    probe: &'p mut Probe,
    spec: Spec<'a>,
}

impl<'a> Call<'_, 'a> {
    pub fn token(mut self, token: &str) -> Self {
        self.spec.token = Some(token.to_string());
        self
    }

    pub fn query(mut self, pairs: &[(&str, String)]) -> Self {
        self.spec.query.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self
    }

    pub fn send(mut self, body: Send<'a>) -> Self {
        self.spec.body = body;
        self
    }
}

impl<'p, 'a: 'p> std::future::IntoFuture for Call<'p, 'a> {
    type Output = Value;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Value> + 'p>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.probe.run(self.spec))
    }
}
