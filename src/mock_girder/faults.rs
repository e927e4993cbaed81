//! Fault injection and the request log, under `/mock` (outside `/api/v1`, so no Girder client
//! can mistake them for Girder endpoints).
//!
//! `POST /mock/faults` with `{"method": "PUT", "path": "<regex on the path>", "count": N,
//! "skip": S, "status": 503 | "delay_ms": 5000 | "drop": true, "after": false, "echo": false}`
//! lets the first S matching requests pass (to reach the 2nd chunk of an upload, say), then
//! makes the next N fail that way: answer with that status, wait before handling, or close the
//! connection without an answer. With `"after": true` the request is handled first (its effect
//! on the state happens) and only then is the answer replaced or dropped: a lost response. With
//! `"echo": true` the status answer's message quotes the request back, its `Girder-Token` header
//! and query string included, as a careless server or proxy does
//! (`Bad token <token> for <path>?<query>`): what secret redaction must cope with. The real
//! Girder the tests start takes the same faults (`tests/real_girder/faults.py`).
//! `GET /mock/requests` lists `{method, path, query, status, fault}` of every API request so far;
//! `DELETE /mock/faults` clears the faults, `DELETE /mock/requests` the log.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

/// What a matching request suffers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FaultKind {
    Status(u16),
    Delay(Duration),
    Drop,
}

#[derive(Debug, Clone)]
pub(crate) struct Fault {
    method: Option<String>,
    path: regex::Regex,
    /// Matching requests still to let through before failing any.
    skip: u32,
    remaining: u32,
    pub kind: FaultKind,
    pub after: bool,
    pub echo: bool,
}

/// The JSON a test posts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    method: Option<String>,
    path: String,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    skip: u32,
    status: Option<u16>,
    delay_ms: Option<u64>,
    #[serde(default)]
    drop: bool,
    #[serde(default)]
    after: bool,
    #[serde(default)]
    echo: bool,
}

fn one() -> u32 {
    1
}

impl FaultSpec {
    pub fn build(self) -> Result<Fault, String> {
        let path = regex::Regex::new(&self.path).map_err(|e| format!("`path` is not a regex: {e}"))?;
        let kind = match (self.status, self.delay_ms, self.drop) {
            (Some(s), None, false) if (100..600).contains(&s) => FaultKind::Status(s),
            (None, Some(ms), false) => FaultKind::Delay(Duration::from_millis(ms)),
            (None, None, true) => FaultKind::Drop,
            _ => return Err("give exactly one of `status` (100-599), `delay_ms` or `drop: true`".into()),
        };
        if self.after && matches!(kind, FaultKind::Delay(_)) {
            return Err("`after` applies to `status` and `drop` only".into());
        }
        if self.echo && !matches!(kind, FaultKind::Status(_)) {
            return Err("`echo` applies to `status` only".into());
        }
        Ok(Fault {
            method: self.method.map(|m| m.to_ascii_uppercase()),
            path,
            skip: self.skip,
            remaining: self.count,
            kind,
            after: self.after,
            echo: self.echo,
        })
    }
}

/// One request as the log keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: Option<u16>,
    pub fault: Option<&'static str>,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    rules: Vec<Fault>,
    pub log: Vec<Logged>,
}

impl Faults {
    pub fn add(&mut self, fault: Fault) {
        self.rules.push(fault);
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The first rule matching the request decides: it lets the request through while it has
    /// requests to skip, else it fails it and is used up by one.
    pub fn take(&mut self, method: &str, path: &str) -> Option<Fault> {
        let rule = self.rules.iter_mut().find(|f| {
            f.remaining > 0 && f.method.as_deref().is_none_or(|m| m == method) && f.path.is_match(path)
        })?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        rule.remaining -= 1;
        let taken = rule.clone();
        self.rules.retain(|f| f.remaining > 0);
        Some(taken)
    }

    pub fn log_json(&self) -> Value {
        Value::Array(
            self.log
                .iter()
                .map(|l| json!({"method": l.method, "path": l.path, "query": l.query, "status": l.status, "fault": l.fault}))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> Result<Fault, String> {
        serde_json::from_value::<FaultSpec>(v).map_err(|e| e.to_string())?.build()
    }

    #[test]
    fn a_fault_matches_method_and_path_regex_for_its_count_only() {
        let mut faults = Faults::default();
        faults
            .add(spec(json!({"method": "put", "path": "^/api/v1/job/", "count": 2, "status": 503})).unwrap());
        assert!(faults.take("GET", "/api/v1/job/1").is_none());
        assert_eq!(faults.take("PUT", "/api/v1/job/1").map(|f| f.kind), Some(FaultKind::Status(503)));
        assert!(faults.take("PUT", "/api/v1/jobs").is_none());
        assert!(faults.take("PUT", "/api/v1/job/2").is_some());
        assert!(faults.take("PUT", "/api/v1/job/3").is_none());
    }

    #[test]
    fn skipped_requests_pass_before_the_fault_takes_the_next() {
        let mut faults = Faults::default();
        faults
            .add(spec(json!({"method": "POST", "path": "/file/chunk$", "skip": 2, "status": 502})).unwrap());
        assert!(faults.take("POST", "/api/v1/file/chunk").is_none());
        assert!(faults.take("POST", "/api/v1/file/chunk").is_none());
        assert!(faults.take("POST", "/api/v1/file/chunk").is_some(), "the third chunk fails");
        assert!(faults.take("POST", "/api/v1/file/chunk").is_none(), "once");
    }

    #[test]
    fn a_spec_needs_exactly_one_kind_and_a_valid_regex() {
        assert!(spec(json!({"path": "x", "drop": true, "echo": true})).is_err());
        assert!(spec(json!({"path": "x", "status": 400, "echo": true})).unwrap().echo);
        assert!(spec(json!({"path": "x", "status": 503, "drop": true})).is_err());
        assert!(spec(json!({"path": "x"})).is_err());
        assert!(spec(json!({"path": "(", "drop": true})).is_err());
        assert!(spec(json!({"path": "x", "delay_ms": 5, "after": true})).is_err());
        assert_eq!(
            spec(json!({"path": "x", "delay_ms": 5})).unwrap().kind,
            FaultKind::Delay(Duration::from_millis(5))
        );
    }
}
