//! Typed Girder errors.
//!
//! Girder answers failures with `{"message": str, "type": "access"|"validation"|"rest", "field"?}`.
//! Each becomes a [`GirderError`] that keeps the status and Girder's own message, plus the method and
//! the path (never the query string: `POST /api_key/token?key=...` carries a secret there, and never
//! a token). Callers branch on the variant: 401 means the token expired or is wrong, 403 means the
//! user lacks access, [`GirderError::is_transient`] drives the retry policy.

use std::time::Duration;

/// A failed Girder call.
#[derive(Debug, thiserror::Error)]
pub enum GirderError {
    /// 401: no token, or the token is invalid or expired.
    #[error("{method} {path}: not authenticated (401): {message}; the Girder token expired or is wrong")]
    Unauthorized { method: String, path: String, message: String },
    /// 403: logged in, but not allowed (another user's folder or job, or a token scope).
    #[error("{method} {path}: access denied (403): {message}")]
    Forbidden { method: String, path: String, message: String },
    /// Any other non-2xx answer.
    #[error("{method} {path}: Girder answered {status}: {message}{}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default(), not_girder_hint(*status, kind.as_deref()))]
    Http {
        status: u16,
        message: String,
        /// Girder's `type`: `access`, `validation`, `rest`, ...
        kind: Option<String>,
        field: Option<String>,
        method: String,
        path: String,
    },
    /// `POST /api_key/token` refused the key.
    #[error("Girder refused the API key ({message}); check the key and that it is active")]
    InvalidApiKey { message: String },
    /// No answer within the configured timeout.
    #[error("{method} {path}: no answer from Girder within {after:?}")]
    Timeout { method: String, path: String, after: Duration },
    /// Connection refused or reset, DNS failure, a dropped connection.
    #[error("{method} {path}: could not talk to Girder at {url}: {}", transport_reason(source))]
    Transport {
        method: String,
        path: String,
        /// The request's URL without its query string (which may carry a key).
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer arrived but is not what the API documents.
    #[error("{method} {path}: unexpected answer from Girder: {message}")]
    Decode { method: String, path: String, message: String },
    /// A region response that is not a decodable array.
    #[error("{method} {path}: {source}")]
    Array {
        method: String,
        path: String,
        #[source]
        source: crate::numpy::NumpyError,
    },
    /// A local file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A dataset folder holds no large image item to read.
    #[error("dataset folder {folder_id} has no large image item (neither meta.selectedLargeImageId nor an item with largeImage); upload an image to the dataset first")]
    NoLargeImage { folder_id: String },
    /// Something the client itself needs is missing from the answer or the request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// An id meant for a request path is not a Girder ObjectId; nothing was sent.
    #[error(transparent)]
    InvalidId(#[from] super::path::InvalidId),
}

impl GirderError {
    /// True for failures worth retrying: timeouts, transport errors, 429 and 5xx, except
    /// [`GirderError::is_no_local_worker`] (a refusal that lasts as long as Girder's set-up).
    pub fn is_transient(&self) -> bool {
        match self {
            GirderError::Timeout { .. } | GirderError::Transport { .. } => true,
            GirderError::Http { status, .. } => {
                (*status == 429 || *status >= 500) && !self.is_no_local_worker()
            }
            _ => false,
        }
    }

    /// Girder 5's `503 No local worker is available to process this request.`: the call needs a
    /// Celery worker on Girder's `local` queue (e.g. `DELETE /folder`) and the server has none.
    pub fn is_no_local_worker(&self) -> bool {
        matches!(self, GirderError::Http { status: 503, message, .. }
            if message.starts_with("No local worker is available"))
    }

    /// The HTTP status Girder answered with, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            GirderError::Unauthorized { .. } => Some(401),
            GirderError::Forbidden { .. } => Some(403),
            GirderError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when no Girder answered at all because of the configuration (connection refused, a
    /// name that does not resolve, a 404 from something that is not Girder): retrying later will
    /// not help, fixing the URL will.
    pub fn is_misconfigured(&self) -> bool {
        match self {
            GirderError::Transport { source, .. } => {
                let reason = transport_reason(source);
                reason.contains("check the host") || reason.contains("does not resolve")
            }
            GirderError::Http { status: 404 | 405, kind: None, .. } => true,
            _ => false,
        }
    }

    /// Girder's own message, when it sent one.
    pub fn girder_message(&self) -> Option<&str> {
        match self {
            GirderError::Unauthorized { message, .. }
            | GirderError::Forbidden { message, .. }
            | GirderError::Http { message, .. }
            | GirderError::InvalidApiKey { message } => Some(message),
            _ => None,
        }
    }

    pub(crate) fn decode(method: &str, path: &str, message: impl Into<String>) -> Self {
        GirderError::Decode { method: method.to_string(), path: path.to_string(), message: message.into() }
    }

    pub(crate) fn transport(method: &str, path: &str, err: reqwest::Error, timeout: Duration) -> Self {
        // reqwest puts the full URL, query included, in its Display; keep it without the query.
        let url = err
            .url()
            .map(|u| {
                let mut u = u.clone();
                u.set_query(None);
                let _ = u.set_password(None);
                u.to_string()
            })
            .unwrap_or_else(|| "(unknown URL)".to_string());
        let err = err.without_url();
        if err.is_timeout() {
            GirderError::Timeout { method: method.to_string(), path: path.to_string(), after: timeout }
        } else {
            GirderError::Transport { method: method.to_string(), path: path.to_string(), url, source: err }
        }
    }

    /// Builds the error for a non-2xx answer from its status and body.
    pub(crate) fn from_status(method: &str, path: &str, status: u16, body: &[u8]) -> Self {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let get =
            |k: &str| parsed.as_ref().and_then(|v| v.get(k)).and_then(|v| v.as_str()).map(str::to_string);
        // Girder sends JSON even under a wrong Content-Type (a tiles/region 400 says image/tiff);
        // anything else (a proxy's HTML page) is summarised, not dumped.
        let message = get("message").unwrap_or_else(|| summarize_body(body));
        let (method, path) = (method.to_string(), path.to_string());
        match status {
            401 => GirderError::Unauthorized { method, path, message },
            403 => GirderError::Forbidden { method, path, message },
            _ => GirderError::Http { status, message, kind: get("type"), field: get("field"), method, path },
        }
    }
}

/// A 404 (or 405) without Girder's JSON error body came from something that is not the Girder
/// REST API: usually an API URL without `/api/v1`, or a web server on the wrong port.
fn not_girder_hint(status: u16, kind: Option<&str>) -> &'static str {
    if matches!(status, 404 | 405) && kind.is_none() {
        "; this is not Girder's REST API answering: check the API URL, it should end in /api/v1 (e.g. https://nimbus.example.org/api/v1)"
    } else {
        ""
    }
}

/// The innermost cause of a transport error (reqwest's own Display is just "error sending
/// request") and what to do about it.
fn transport_reason(err: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = err;
    let mut io_kind = None;
    while let Some(next) = inner.source() {
        if let Some(io) = next.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        inner = next;
    }
    let text = inner.to_string();
    let advice = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            "nothing listens there: check the host and port of the Girder API URL"
        }
        _ if text.contains("dns error") || text.contains("failed to lookup") => {
            "the host name does not resolve: check the Girder API URL"
        }
        _ if err.is_connect() => "check the Girder API URL and that the server is up",
        _ => "the connection broke; this is usually temporary",
    };
    format!("{text} ({advice})")
}

fn summarize_body(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_string()
    } else if text.chars().count() > MAX {
        format!("{}...", text.chars().take(MAX).collect::<String>())
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn girder_error_json_keeps_status_message_type_and_field() {
        let body = br#"{"field":"status","message":"Invalid state transition to '3', Current state is '0'.","type":"validation"}"#;
        let err = GirderError::from_status("PUT", "job/abc", 400, body);
        let GirderError::Http { status, message, kind, field, .. } = &err else { panic!("{err:?}") };
        assert_eq!((*status, kind.as_deref(), field.as_deref()), (400, Some("validation"), Some("status")));
        assert_eq!(message, "Invalid state transition to '3', Current state is '0'.");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("PUT job/abc"), "{err}");
    }

    #[test]
    fn unauthorized_and_forbidden_are_distinct() {
        let a = GirderError::from_status("GET", "folder/x", 401, br#"{"message":"m","type":"access"}"#);
        let f = GirderError::from_status("GET", "folder/x", 403, br#"{"message":"m","type":"access"}"#);
        assert!(matches!(a, GirderError::Unauthorized { .. }));
        assert!(matches!(f, GirderError::Forbidden { .. }));
        assert!(a.to_string().contains("expired or is wrong"));
    }

    #[test]
    fn server_errors_and_429_are_transient_but_400_is_not() {
        for (status, transient) in [(500, true), (503, true), (429, true), (400, false), (404, false)] {
            assert_eq!(
                GirderError::from_status("GET", "p", status, b"<html>").is_transient(),
                transient,
                "{status}"
            );
        }
    }

    #[test]
    fn a_404_that_is_not_girder_says_the_url_should_end_in_api_v1() {
        let err = GirderError::from_status("GET", "user/me", 404, b"");
        assert!(err.to_string().contains("should end in /api/v1"), "{err}");
        assert!(err.is_misconfigured());
        let girder =
            GirderError::from_status("GET", "item/x", 404, br#"{"message":"no item","type":"rest"}"#);
        assert!(!girder.to_string().contains("/api/v1"), "{girder}");
        assert!(!girder.is_misconfigured());
    }

    #[tokio::test]
    async fn connection_refused_names_the_url_and_the_fix() {
        // a port nobody listens on: bind one, then close it
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/api/v1/user/me?token=secret");
        let e = reqwest::Client::new().get(&url).send().await.unwrap_err();
        let err = GirderError::transport("GET", "user/me", e, Duration::from_secs(1));
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}/api/v1/user/me")), "{text}");
        assert!(text.contains("check the host and port"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(err.is_misconfigured() && err.is_transient());
    }

    #[test]
    fn non_json_body_is_summarised() {
        let body = "x".repeat(1000);
        let err = GirderError::from_status("GET", "p", 502, body.as_bytes());
        assert!(err.girder_message().is_some_and(|m| m.len() < 210));
    }
}
