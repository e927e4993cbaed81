//! The mock held to a real Girder 5.0.21: one scripted sequence of the REST calls the worker and
//! its tests make (users, api keys, folders, items, uploads, downloads, resource lookup, jobs,
//! NimbusImage annotations, worker interfaces, large_image tiles) runs against both servers, and
//! every exchange is compared: status code, the error message (ids replaced by placeholders), and
//! the shape of a JSON answer (every field the mock sends must exist in Girder's answer with the
//! same JSON type; Girder may send more). Binary answers (downloads, regions) must be equal.
//!
//! A difference fails the test with the list of all of them; the fix goes into the mock.

use std::fmt::Write as _;

mod probe;
mod scenario;

use cellpose_train_worker::mock_girder::{spawn_mock, MockConfig};
use serde_json::Value;

use super::real_girder::RealGirder;
use probe::{Probe, Seen};
use scenario::scenario;

/// Ids (24 hex), tokens (64 alphanumerics) and dates differ between servers: placeholders.
fn normalise(text: &str) -> String {
    let ids = regex::Regex::new(r"\b[0-9a-f]{24}\b").unwrap();
    let tokens = regex::Regex::new(r"\b[A-Za-z0-9]{40,64}\b").unwrap();
    tokens.replace_all(&ids.replace_all(text, "<id>"), "<token>").into_owned()
}

/// Fields of `mock` missing from `real` or of another JSON type, as `path: why` lines.
fn shape_diff(path: &str, mock: &Value, real: &Value, out: &mut Vec<String>) {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    match (mock, real) {
        (Value::Object(m), Value::Object(r)) => {
            for (k, mv) in m {
                match r.get(k) {
                    Some(rv) => shape_diff(&format!("{path}.{k}"), mv, rv, out),
                    None => out.push(format!("{path}.{k}: only the mock sends it")),
                }
            }
        }
        (Value::Array(m), Value::Array(r)) => {
            if m.len() != r.len() {
                out.push(format!("{path}: {} elements, Girder {}", m.len(), r.len()));
            }
            for (i, (mv, rv)) in m.iter().zip(r).enumerate() {
                shape_diff(&format!("{path}[{i}]"), mv, rv, out);
            }
        }
        // numbers: Girder stores some counters as floats, the JSON type is the same
        (m, r) if kind(m) != kind(r) => out.push(format!("{path}: mock {}, Girder {}", kind(m), kind(r))),
        _ => {}
    }
}

/// Every difference between the two servers' exchanges.
fn differences(mock: &[Seen], real: &[Seen]) -> Vec<String> {
    let mut out = Vec::new();
    for (m, r) in mock.iter().zip(real) {
        let mut here = Vec::new();
        if m.status != r.status {
            here.push(format!(
                "status: mock {}, Girder {} ({})",
                m.status,
                r.status,
                normalise(&String::from_utf8_lossy(&r.body))
            ));
        } else if m.status >= 400 {
            let msg = |s: &Seen| s.json.as_ref().and_then(|j| j["message"].as_str()).map(normalise);
            if msg(m) != msg(r) {
                here.push(format!("message: mock {:?}, Girder {:?}", msg(m), msg(r)));
            }
        } else {
            match (&m.json, &r.json) {
                (Some(mj), Some(rj)) => shape_diff("$", mj, rj, &mut here),
                (None, None) => {
                    if m.body != r.body {
                        here.push(format!(
                            "binary body differs: mock {} bytes, Girder {}",
                            m.body.len(),
                            r.body.len()
                        ));
                    }
                }
                (mj, rj) => here.push(format!("JSON: mock {}, Girder {}", mj.is_some(), rj.is_some())),
            }
            if m.total_count != r.total_count {
                here.push(format!(
                    "Girder-Total-Count: mock {:?}, Girder {:?}",
                    m.total_count, r.total_count
                ));
            }
        }
        out.extend(here.into_iter().map(|d| format!("{}: {d}", m.label)));
    }
    out
}

#[tokio::test]
async fn the_mock_answers_every_call_as_a_real_girder_5_does() {
    let real = RealGirder::start();
    let mock = spawn_mock(MockConfig::default()).await.expect("mock starts");
    let mut on_real = Probe::new(&real.api_url);
    scenario(&mut on_real).await;
    let mut on_mock = Probe::new(&mock.api_url);
    scenario(&mut on_mock).await;
    assert_eq!(on_mock.seen.len(), on_real.seen.len());
    let diffs = differences(&on_mock.seen, &on_real.seen);
    let mut report = String::new();
    for d in &diffs {
        let _ = writeln!(report, "  {d}");
    }
    let server_errors: Vec<&str> = on_real
        .seen
        .iter()
        .filter(|s| s.status >= 500 && s.status != 503)
        .map(|s| s.label.as_str())
        .collect();
    assert!(server_errors.is_empty(), "the real Girder failed {server_errors:?}:\n{}", real.stderr());
    eprintln!("girder contract: {} exchanges compared, {} differences", on_real.seen.len(), diffs.len());
    assert!(
        diffs.is_empty(),
        "{} of {} exchanges differ between the mock and Girder 5.0.21:\n{report}",
        diffs.len(),
        on_real.seen.len()
    );
}
