//! Request parsing and error answers shaped like Girder's.
//!
//! Girder (CherryPy) merges query parameters and a form-encoded body into one parameter set, so
//! [`Ctx::param`] looks in both. Errors are `{"message", "type"[, "field"]}` with Girder's status
//! codes.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

/// Largest request body the mock reads (Girder clients send chunks of up to 64 MiB).
pub(crate) const MAX_BODY: usize = 256 * 1024 * 1024;

/// What a handler needs from a request.
pub(crate) struct Ctx {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Ctx {
    /// A parameter from the query string, else from a form-encoded body.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().chain(self.form.iter()).find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.param(name).ok_or_else(|| ApiError::rest(format!("Parameter '{name}' is required.")))
    }

    /// A boolean parameter as Girder reads them (`true`/`false`, any case).
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.param(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true") | Some("1") | Some("yes") => Ok(true),
            Some("false") | Some("0") | Some("no") | Some("") => Ok(false),
            Some(_) => Err(ApiError::rest(format!("The {name} parameter must be a boolean."))),
        }
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.param(name)
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| ApiError::rest(format!("Invalid value for integer parameter {name}: {v}.")))
            })
            .transpose()
    }

    pub fn float(&self, name: &str) -> Result<Option<f64>, ApiError> {
        self.param(name)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| ApiError::rest(format!("Invalid value for numeric parameter {name}: {v}.")))
            })
            .transpose()
    }

    /// A JSON-valued parameter (`metadata`, `kwargs`, `types`, ...).
    pub fn json_param(&self, name: &str) -> Result<Option<Value>, ApiError> {
        self.param(name)
            .map(|v| {
                serde_json::from_str(v)
                    .map_err(|_| ApiError::rest(format!("Parameter {name} must be valid JSON.")))
            })
            .transpose()
    }

    /// The request body as JSON.
    pub fn json_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body).map_err(|_| ApiError::rest("Invalid JSON passed in request body."))
    }

    /// `Girder-Token` header, else the `token` parameter.
    pub fn token(&self) -> Option<&str> {
        self.headers.get("Girder-Token").and_then(|v| v.to_str().ok()).or_else(|| self.param("token"))
    }

    fn is_form(&self) -> bool {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"))
    }
}

impl<S: Send + Sync> FromRequest<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "rest", format!("could not read the request body: {e}"))
        })?;
        let query = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        // inside the nested /api/v1 router the URI is stripped; Girder's messages name the full path
        let path = match parts.extensions.get::<axum::extract::OriginalUri>() {
            Some(original) => original.0.path().to_string(),
            None => parts.uri.path().to_string(),
        };
        let mut ctx =
            Ctx { method: parts.method, path, query, form: Vec::new(), headers: parts.headers, body };
        if ctx.is_form() {
            ctx.form = form_urlencoded::parse(&ctx.body).into_owned().collect();
        }
        Ok(ctx)
    }
}

/// A Girder error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// large_image answers tile errors with its image Content-Type (`image/tiff`).
    pub content_type: &'static str,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), field: None, content_type: "application/json" }
    }
    /// 400 `type: rest`.
    pub fn rest(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "rest", message)
    }
    /// 400 `type: validation`.
    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "validation", message)
    }
    pub fn field(mut self, field: &str) -> ApiError {
        self.field = Some(field.to_string());
        self
    }
    /// 401 for anonymous requests, 403 for logged-in ones.
    pub fn access(logged_in: bool, message: impl Into<String>) -> ApiError {
        let status = if logged_in { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
        ApiError::new(status, "access", message)
    }
    pub fn login_required() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "access", "You must be logged in or have a valid auth token.")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"message": self.message, "type": self.kind});
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        resp
    }
}

/// A JSON answer as Girder sends it (keys sorted, as Python's encoder does).
pub(crate) fn json_response(value: Value) -> Response {
    let mut resp = Response::new(Body::from(value.to_string()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A JSON list with the `Girder-Total-Count` header.
pub(crate) fn list_response(values: Vec<Value>, total: usize) -> Response {
    let mut resp = json_response(Value::Array(values));
    resp.headers_mut().insert("girder-total-count", HeaderValue::from(total));
    resp
}

/// Raw bytes with a Content-Type and, for downloads, a Content-Disposition.
pub(crate) fn bytes_response(body: Bytes, content_type: &str, attachment: Option<&str>) -> Response {
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Some(name) = attachment {
        let escaped = name.replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{escaped}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    resp
}

pub(crate) type ApiResult = Result<Response, ApiError>;
