//! One redaction for everything that leaves the process: the tracing log (stderr, pretty or
//! JSON), the one-shot JSON lines on stdout, the Girder job log and progress message, the
//! `/healthz` answer and the error chain printed at exit all pass through [`text`] (or
//! [`json`]), so a secret quoted anywhere (a Girder error body that echoes the request, a URL
//! with a password) is caught in one place whatever path it took.
//!
//! What is replaced by `***`:
//! - the userinfo of a URL (`https://user:password@host/` -> `https://***@host/`);
//! - the value of a query parameter named like a credential (`token`, `key`, `password`,
//!   `secret`, and names ending so, e.g. `authToken`, `api_key`: `?key=abc&x=1` ->
//!   `?key=***&x=1`);
//! - every secret value this process holds, wherever it appears: each [`crate::girder::Secret`]
//!   (the user's Girder token, the service account's API key, the tokens it is exchanged for,
//!   a job's token) is [`register`]ed when it is made, so a server that quotes the token back
//!   (`Bad token <token> for ...`) has it removed from the quote.
//!
//! Secrets shorter than [`MIN_SECRET_LEN`] characters are not registered: replacing every `t`
//! of a log line would destroy it, and no Girder token or API key is that short.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::{OnceLock, RwLock};

use regex::Regex;
use serde_json::Value;

/// What a redacted value is replaced by.
pub const MASK: &str = "***";

/// Shorter secrets are not searched for (Girder tokens have 64 characters, API keys 40).
pub const MIN_SECRET_LEN: usize = 8;

/// At most this many secrets are remembered (the oldest are forgotten first): a long-running
/// worker registers one token per job it sees, and expired tokens stop mattering.
const MAX_SECRETS: usize = 1024;

/// The secrets to search for: the process has one ([`register`], [`text`]); tests make their own.
struct Registry {
    cap: usize,
    order: VecDeque<String>,
    known: HashSet<String>,
    /// One alternation of every secret (escaped, longest first so a secret that contains another
    /// is replaced whole), rebuilt when one is added; the regex crate searches literal
    /// alternations with Aho-Corasick, so a line is scanned once however many there are.
    matcher: Option<Regex>,
}

impl Registry {
    fn new(cap: usize) -> Registry {
        Registry { cap, order: VecDeque::new(), known: HashSet::new(), matcher: None }
    }

    fn add(&mut self, secret: &str) {
        if secret.chars().count() < MIN_SECRET_LEN || !self.known.insert(secret.to_string()) {
            return;
        }
        self.order.push_back(secret.to_string());
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
        let mut all: Vec<&String> = self.order.iter().collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let pattern = all.iter().map(|s| regex::escape(s)).collect::<Vec<_>>().join("|");
        self.matcher = Regex::new(&pattern).ok();
    }

    fn redact<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(s);
        if let Cow::Owned(o) = userinfo().replace_all(&out, format!("${{1}}{MASK}@").as_str()) {
            out = Cow::Owned(o);
        }
        if let Cow::Owned(o) = credential_query().replace_all(&out, format!("${{1}}{MASK}").as_str()) {
            out = Cow::Owned(o);
        }
        if let Some(m) = &self.matcher {
            if let Cow::Owned(o) = m.replace_all(&out, MASK) {
                out = Cow::Owned(o);
            }
        }
        out
    }
}

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| RwLock::new(Registry::new(MAX_SECRETS)))
}

/// Remembers `secret` so that [`text`] removes it from everything written from now on.
pub fn register(secret: &str) {
    if secret.chars().count() < MIN_SECRET_LEN {
        return;
    }
    let reg = registry();
    if reg.read().unwrap_or_else(|p| p.into_inner()).known.contains(secret) {
        return;
    }
    reg.write().unwrap_or_else(|p| p.into_inner()).add(secret);
}

fn userinfo() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // scheme://userinfo@ ; the userinfo may not contain `/`, whitespace or quotes
    RE.get_or_init(|| Regex::new(r#"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@"'<>]+@"#).expect("valid regex"))
}

fn credential_query() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // ?name=value or &name=value (also `;` separators), for credential-like names
    RE.get_or_init(|| {
        Regex::new(r#"(?i)([?&;][a-z0-9_.\-]*(?:token|key|password|passwd|secret)=)[^&;#\s"'<>]*"#)
            .expect("valid regex")
    })
}

/// `s` with URL userinfo, credential query values and every registered secret replaced by
/// [`MASK`]. Borrowed when there was nothing to replace.
pub fn text(s: &str) -> Cow<'_, str> {
    registry().read().unwrap_or_else(|p| p.into_inner()).redact(s)
}

/// [`text`] applied to every string (and object key) in `value`.
pub fn json(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(o) = text(s) {
                *s = o;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(json),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut v) in entries {
                json(&mut v);
                map.insert(text(&k).into_owned(), v);
            }
        }
        _ => {}
    }
}

/// A [`tracing_subscriber::fmt::MakeWriter`] for stderr that redacts each log record: the
/// formatter writes one record per writer, which is buffered and written redacted on drop.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactedStderr;

/// One log record on its way to stderr.
pub struct RedactedRecord(Vec<u8>);

impl std::io::Write for RedactedRecord {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedRecord {
    fn drop(&mut self) {
        let record = String::from_utf8_lossy(&self.0);
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text(&record).as_bytes());
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedRecord;
    fn make_writer(&'a self) -> RedactedRecord {
        RedactedRecord(Vec::with_capacity(256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_in_urls_is_removed_and_the_rest_of_the_url_kept() {
        assert_eq!(
            text("api_url=https://svc:hunter2@nimbus.example.org/api/v1 up"),
            "api_url=https://***@nimbus.example.org/api/v1 up"
        );
        assert_eq!(text("http://tok@h:8080/x"), "http://***@h:8080/x");
        // an address without a scheme, and a URL without userinfo, are left alone
        assert_eq!(text("ask alice@example.org at http://h/a@b"), "ask alice@example.org at http://h/a@b");
    }

    #[test]
    fn credential_query_values_are_removed_and_other_parameters_kept() {
        assert_eq!(
            text("POST /api/v1/api_key/token?key=K3y&duration=1 and ?token=abc&limit=5#f"),
            "POST /api/v1/api_key/token?key=***&duration=1 and ?token=***&limit=5#f"
        );
        assert_eq!(
            text("x?authToken=a;password=b&Api_Key=c&folderId=d"),
            "x?authToken=***;password=***&Api_Key=***&folderId=d"
        );
        assert_eq!(text("{\"u\": \"/x?secret=s\"}"), "{\"u\": \"/x?secret=***\"}", "stops at the JSON quote");
        assert!(matches!(text("nothing to hide here"), Cow::Borrowed(_)));
    }

    #[test]
    fn registered_secrets_are_removed_wherever_they_appear() {
        let token = "reg-test-token-0123456789abcdefghijklmnopqrstuvwxyz";
        let inner = "reg-test-token-0123456789";
        register(inner);
        register(token);
        register("short");
        let quoted = format!("Bad token {token} (also {inner}) for user");
        assert_eq!(text(&quoted), "Bad token *** (also ***) for user");
        assert_eq!(text("a short word"), "a short word", "short secrets are not registered");
        let mut v = serde_json::json!({"error": format!("x {token}"), "list": [token, 3], token: "k"});
        json(&mut v);
        assert_eq!(v, serde_json::json!({"error": "x ***", "list": ["***", 3], "***": "k"}));
    }

    #[test]
    fn a_registry_forgets_the_oldest_beyond_its_cap() {
        let mut reg = Registry::new(3);
        for s in ["secret-number-1", "secret-number-2", "secret-number-3", "secret-number-4"] {
            reg.add(s);
        }
        assert_eq!(reg.redact("secret-number-1 secret-number-4"), "secret-number-1 ***");
        assert_eq!(reg.order.len(), 3);
    }
}
