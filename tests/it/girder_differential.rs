//! The mock held to a real Girder 5.0.21: one scripted sequence of the REST calls the worker and
//! its tests make (users, api keys, folders, items, uploads, downloads, resource lookup, jobs,
//! NimbusImage annotations, worker interfaces, large_image tiles) runs against both servers, and
//! every exchange is compared: status code, the error message (ids replaced by placeholders), and
//! the shape of a JSON answer (every field the mock sends must exist in Girder's answer with the
//! same JSON type; Girder may send more). Binary answers (downloads, regions) must be equal.
//!
//! A difference fails the test with the list of all of them; the fix goes into the mock.

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use cellpose_train_worker::mock_girder::{spawn_mock, MockConfig};
use reqwest::Method;
use serde_json::{json, Value};

use super::helpers::fixture;
use super::real_girder::RealGirder;

/// What one exchange looked like.
#[derive(Debug, Clone)]
struct Seen {
    label: String,
    status: u16,
    json: Option<Value>,
    body: Bytes,
    total_count: Option<String>,
}

/// A body to send.
enum Send<'a> {
    None,
    /// No body and, unlike the client, no `Content-Length` either.
    Bare,
    Form(&'a [(&'a str, String)]),
    Json(Value),
    Bytes(Bytes),
}

/// Runs calls against one server and keeps what it saw.
struct Probe {
    http: reqwest::Client,
    api: String,
    seen: Vec<Seen>,
}

impl Probe {
    fn new(api: &str) -> Probe {
        Probe { http: reqwest::Client::new(), api: api.to_string(), seen: Vec::new() }
    }

    async fn call(
        &mut self,
        label: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        query: &[(&str, String)],
        body: Send<'_>,
    ) -> Value {
        let mut rb = self.http.request(method, format!("{}/{path}", self.api)).query(query);
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

    async fn basic(&mut self, label: &str, login: &str, password: &str) -> Value {
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

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn q(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The scripted sequence. Jobs are created with a token from `dev_support/job_token`, which the
/// test launcher and the mock serve (not Girder: NimbusImage creates jobs server-side).
async fn scenario(p: &mut Probe) {
    use Method as M;
    let user = |login: &str| {
        vec![
            ("login", login.to_string()),
            ("email", format!("{login}@example.com")),
            ("firstName", login.to_string()),
            ("lastName", "Tester".to_string()),
            ("password", format!("{login}pass1")),
        ]
    };
    // users and authentication
    let admin =
        p.call("POST /user (first: admin)", M::POST, "user", None, &[], Send::Form(&user("admin"))).await;
    let admin_tok = s(&admin["authToken"]["token"]);
    p.call("GET /user/me without token", M::GET, "user/me", None, &[], Send::None).await;
    p.call("POST /user by admin", M::POST, "user", Some(&admin_tok), &[], Send::Form(&user("alice"))).await;
    p.call("POST /user by admin", M::POST, "user", Some(&admin_tok), &[], Send::Form(&user("bobby"))).await;
    p.call("POST /user duplicate login", M::POST, "user", Some(&admin_tok), &[], Send::Form(&user("alice")))
        .await;
    p.basic("login with a wrong password", "alice", "nope").await;
    let alice = p.basic("login", "alice", "alicepass1").await;
    let tok = s(&alice["authToken"]["token"]);
    let alice_id = s(&alice["user"]["_id"]);
    let bob = s(&p.basic("login", "bobby", "bobbypass1").await["authToken"]["token"]);
    p.call("GET /user/me", M::GET, "user/me", Some(&tok), &[], Send::None).await;
    p.call("GET /user/me bad token", M::GET, "user/me", Some("x"), &[], Send::None).await;
    let key = p
        .call(
            "POST /api_key",
            M::POST,
            "api_key",
            Some(&tok),
            &[],
            Send::Form(&[("name", "worker".into()), ("active", "true".into())]),
        )
        .await;
    p.call(
        "POST /api_key/token",
        M::POST,
        "api_key/token",
        None,
        &q(&[("key", &s(&key["key"]))]),
        Send::None,
    )
    .await;
    p.call(
        "POST /api_key/token bad key",
        M::POST,
        "api_key/token",
        None,
        &q(&[("key", &"k".repeat(40))]),
        Send::None,
    )
    .await;
    p.call(
        "POST /api_key/token no Content-Length",
        M::POST,
        "api_key/token",
        None,
        &q(&[("key", "k")]),
        Send::Bare,
    )
    .await;

    // folders
    let private = p
        .call(
            "GET /folder Private",
            M::GET,
            "folder",
            Some(&tok),
            &q(&[("parentType", "user"), ("parentId", &alice_id), ("name", "Private")]),
            Send::None,
        )
        .await;
    let private_id = s(&private[0]["_id"]);
    let ds_form = [
        ("parentType", "folder".to_string()),
        ("parentId", private_id.clone()),
        ("name", "dataset1".to_string()),
        ("metadata", json!({"subtype": "contrastDataset", "selectedLargeImageId": null}).to_string()),
        ("reuseExisting", "false".to_string()),
    ];
    let ds = p.call("POST /folder dataset", M::POST, "folder", Some(&tok), &[], Send::Form(&ds_form)).await;
    let ds_id = s(&ds["_id"]);
    p.call("POST /folder duplicate", M::POST, "folder", Some(&tok), &[], Send::Form(&ds_form)).await;
    p.call("GET /folder/{id}", M::GET, &format!("folder/{ds_id}"), Some(&tok), &[], Send::None).await;
    p.call("GET /folder/{id} anonymous", M::GET, &format!("folder/{ds_id}"), None, &[], Send::None).await;
    p.call("GET /folder/{id} other user", M::GET, &format!("folder/{ds_id}"), Some(&bob), &[], Send::None)
        .await;
    p.call("GET /folder/{id} bad id", M::GET, "folder/notanid", Some(&tok), &[], Send::None).await;
    let models_form = [
        ("parentType", "folder".to_string()),
        ("parentId", private_id.clone()),
        ("name", "scratch".to_string()),
    ];
    let scratch =
        p.call("POST /folder scratch", M::POST, "folder", Some(&tok), &[], Send::Form(&models_form)).await;
    let scratch_id = s(&scratch["_id"]);

    // items and uploads
    let item = p
        .call(
            "POST /item",
            M::POST,
            "item",
            Some(&tok),
            &q(&[("folderId", &scratch_id), ("name", "m1")]),
            Send::None,
        )
        .await;
    let item_id = s(&item["_id"]);
    p.call(
        "POST /item no Content-Length",
        M::POST,
        "item",
        Some(&tok),
        &q(&[("folderId", &scratch_id), ("name", "m2")]),
        Send::Bare,
    )
    .await;
    p.call("GET /item?folderId", M::GET, "item", Some(&tok), &q(&[("folderId", &scratch_id)]), Send::None)
        .await;
    p.call(
        "GET /item?folderId&name",
        M::GET,
        "item",
        Some(&tok),
        &q(&[("folderId", &scratch_id), ("name", "m1")]),
        Send::None,
    )
    .await;
    p.call(
        "PUT /item/{id}?name",
        M::PUT,
        &format!("item/{item_id}"),
        Some(&tok),
        &q(&[("name", "m1b")]),
        Send::None,
    )
    .await;
    p.call(
        "PUT /item/{id} no Content-Length",
        M::PUT,
        &format!("item/{item_id}"),
        Some(&tok),
        &q(&[("name", "m1c")]),
        Send::Bare,
    )
    .await;
    let data = Bytes::from((0..3000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    let up = p
        .call(
            "POST /file (init into item)",
            M::POST,
            "file",
            Some(&tok),
            &q(&[
                ("parentType", "item"),
                ("parentId", &item_id),
                ("name", "weights"),
                ("size", "3000"),
                ("mimeType", "application/octet-stream"),
            ]),
            Send::None,
        )
        .await;
    let up_id = s(&up["_id"]);
    p.call("GET /file/offset", M::GET, "file/offset", Some(&tok), &q(&[("uploadId", &up_id)]), Send::None)
        .await;
    p.call(
        "POST /file/chunk wrong offset",
        M::POST,
        "file/chunk",
        Some(&tok),
        &q(&[("uploadId", &up_id), ("offset", "10")]),
        Send::Bytes(data.clone()),
    )
    .await;
    let file = p
        .call(
            "POST /file/chunk final",
            M::POST,
            "file/chunk",
            Some(&tok),
            &q(&[("uploadId", &up_id), ("offset", "0")]),
            Send::Bytes(data.clone()),
        )
        .await;
    let file_id = s(&file["_id"]);
    p.call("GET /file/{id}", M::GET, &format!("file/{file_id}"), Some(&tok), &[], Send::None).await;
    p.call(
        "GET /file/{id}/download",
        M::GET,
        &format!("file/{file_id}/download"),
        Some(&tok),
        &[],
        Send::None,
    )
    .await;
    p.call(
        "GET /item/{id}/download",
        M::GET,
        &format!("item/{item_id}/download"),
        Some(&tok),
        &[],
        Send::None,
    )
    .await;
    // two chunks: a non-final one must be at least Girder's 5 MiB minimum; resume from the offset
    const MIB5: usize = 5 * 1024 * 1024;
    let big = Bytes::from((0..MIB5 + 1000).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    let total = big.len().to_string();
    let init =
        [("parentType", "item"), ("parentId", item_id.as_str()), ("name", "big"), ("size", total.as_str())];
    let up = p.call("POST /file (init, 2 chunks)", M::POST, "file", Some(&tok), &q(&init), Send::None).await;
    let up_id = s(&up["_id"]);
    let small = big.slice(0..1000);
    p.call(
        "POST /file/chunk non-final under the minimum",
        M::POST,
        "file/chunk",
        Some(&tok),
        &q(&[("uploadId", &up_id), ("offset", "0")]),
        Send::Bytes(small),
    )
    .await;
    p.call(
        "POST /file/chunk first",
        M::POST,
        "file/chunk",
        Some(&tok),
        &q(&[("uploadId", &up_id), ("offset", "0")]),
        Send::Bytes(big.slice(0..MIB5)),
    )
    .await;
    p.call(
        "GET /file/offset after a chunk",
        M::GET,
        "file/offset",
        Some(&tok),
        &q(&[("uploadId", &up_id)]),
        Send::None,
    )
    .await;
    let done = p
        .call(
            "POST /file/chunk last",
            M::POST,
            "file/chunk",
            Some(&tok),
            &q(&[("uploadId", &up_id), ("offset", &MIB5.to_string())]),
            Send::Bytes(big.slice(MIB5..)),
        )
        .await;
    p.call(
        "GET /file/{id}/download (2 chunks)",
        M::GET,
        &format!("file/{}/download", s(&done["_id"])),
        Some(&tok),
        &[],
        Send::None,
    )
    .await;
    p.call(
        "GET /item/{id}/files",
        M::GET,
        &format!("item/{item_id}/files"),
        Some(&tok),
        &q(&[("limit", "0")]),
        Send::None,
    )
    .await;
    p.call(
        "POST /file size=0",
        M::POST,
        "file",
        Some(&tok),
        &q(&[("parentType", "item"), ("parentId", &item_id), ("name", "empty"), ("size", "0")]),
        Send::None,
    )
    .await;
    p.call(
        "GET /resource/lookup item",
        M::GET,
        "resource/lookup",
        Some(&tok),
        &q(&[("path", "/user/alice/Private/scratch/m1c")]),
        Send::None,
    )
    .await;
    p.call(
        "GET /resource/lookup missing",
        M::GET,
        "resource/lookup",
        Some(&tok),
        &q(&[("path", "/user/alice/Private/nope")]),
        Send::None,
    )
    .await;
    p.call("DELETE /item/{id}", M::DELETE, &format!("item/{item_id}"), Some(&tok), &[], Send::None).await;
    p.call("GET /item/{id} deleted", M::GET, &format!("item/{item_id}"), Some(&tok), &[], Send::None).await;
    p.call(
        "DELETE /folder/{id} without a local worker",
        M::DELETE,
        &format!("folder/{scratch_id}"),
        Some(&tok),
        &[],
        Send::None,
    )
    .await;
    p.call(
        "PUT /dev_support/local_worker",
        M::PUT,
        "dev_support/local_worker",
        Some(&admin_tok),
        &q(&[("enabled", "true")]),
        Send::None,
    )
    .await;
    p.call(
        "DELETE /folder/{id} with a local worker",
        M::DELETE,
        &format!("folder/{scratch_id}"),
        Some(&tok),
        &[],
        Send::None,
    )
    .await;
    p.call("GET /folder/{id} deleted", M::GET, &format!("folder/{scratch_id}"), Some(&tok), &[], Send::None)
        .await;

    // NimbusImage annotations and worker interfaces
    let ann = |shape: &str, tags: &[&str], x: f64| {
        json!({"tags": tags, "shape": shape, "channel": 0, "location": {"XY": 0, "Z": 0, "Time": 0},
               "datasetId": ds_id, "name": "", "color": null,
               "coordinates": [{"x": x, "y": 10.0, "z": 0}, {"x": x + 30.0, "y": 12.0, "z": 0}, {"x": x + 20.0, "y": 45.0, "z": 0}]})
    };
    let docs = json!([
        ann("polygon", &["cell"], 10.0),
        ann("polygon", &["cell", "b"], 50.0),
        ann("rectangle", &["roi"], 5.0)
    ]);
    p.call(
        "POST /upenn_annotation/multiple",
        M::POST,
        "upenn_annotation/multiple",
        Some(&tok),
        &[],
        Send::Json(docs),
    )
    .await;
    let mut bad = ann("polygon", &["cell"], 1.0);
    bad.as_object_mut().unwrap().remove("channel");
    p.call(
        "POST /upenn_annotation missing channel",
        M::POST,
        "upenn_annotation",
        Some(&tok),
        &[],
        Send::Json(bad),
    )
    .await;
    let page = p
        .call(
            "GET /upenn_annotation page",
            M::GET,
            "upenn_annotation",
            Some(&tok),
            &q(&[("datasetId", &ds_id), ("limit", "2"), ("sort", "_id"), ("sortdir", "1")]),
            Send::None,
        )
        .await;
    p.call(
        "GET /upenn_annotation afterId",
        M::GET,
        "upenn_annotation",
        Some(&tok),
        &q(&[
            ("datasetId", &ds_id),
            ("limit", "2"),
            ("sort", "_id"),
            ("sortdir", "1"),
            ("afterId", &s(&page[1]["_id"])),
        ]),
        Send::None,
    )
    .await;
    p.call(
        "GET /upenn_annotation tags",
        M::GET,
        "upenn_annotation",
        Some(&tok),
        &q(&[("datasetId", &ds_id), ("tags", r#"["cell"]"#), ("shape", "polygon")]),
        Send::None,
    )
    .await;
    p.call(
        "GET /upenn_annotation/count",
        M::GET,
        "upenn_annotation/count",
        Some(&tok),
        &q(&[("datasetId", &ds_id)]),
        Send::None,
    )
    .await;
    p.call(
        "GET /upenn_annotation anonymous",
        M::GET,
        "upenn_annotation",
        None,
        &q(&[("datasetId", &ds_id)]),
        Send::None,
    )
    .await;
    p.call(
        "GET /upenn_annotation other user",
        M::GET,
        "upenn_annotation",
        Some(&bob),
        &q(&[("datasetId", &ds_id)]),
        Send::None,
    )
    .await;
    let iface = json!({"Base Model": {"type": "select", "items": ["a"], "default": "a"}});
    p.call(
        "POST /worker_interface",
        M::POST,
        "worker_interface",
        Some(&tok),
        &q(&[("image", "w:1")]),
        Send::Json(iface),
    )
    .await;
    p.call(
        "GET /worker_interface",
        M::GET,
        "worker_interface",
        Some(&tok),
        &q(&[("image", "w:1")]),
        Send::None,
    )
    .await;
    p.call(
        "GET /worker_interface unknown",
        M::GET,
        "worker_interface",
        Some(&tok),
        &q(&[("image", "x:2")]),
        Send::None,
    )
    .await;

    // large_image: a 2-channel 16-bit OME-TIFF uploaded into the dataset folder
    let tiff = Bytes::from(std::fs::read(fixture("girder/tiles/cyx.ome.tif")).unwrap());
    let size = tiff.len().to_string();
    let up = p
        .call(
            "POST /file (init into folder)",
            M::POST,
            "file",
            Some(&tok),
            &q(&[
                ("parentType", "folder"),
                ("parentId", &ds_id),
                ("name", "cyx.ome.tif"),
                ("size", &size),
                ("mimeType", "image/tiff"),
            ]),
            Send::None,
        )
        .await;
    let f = p
        .call(
            "POST /file/chunk image",
            M::POST,
            "file/chunk",
            Some(&tok),
            &q(&[("uploadId", &s(&up["_id"])), ("offset", "0")]),
            Send::Bytes(tiff),
        )
        .await;
    let image_id = s(&f["itemId"]);
    p.call("GET /item/{id} large image", M::GET, &format!("item/{image_id}"), Some(&tok), &[], Send::None)
        .await;
    p.call("GET /item/{id}/tiles", M::GET, &format!("item/{image_id}/tiles"), Some(&tok), &[], Send::None)
        .await;
    for (label, frame) in
        [("GET /item/{id}/tiles/region pickle:5", "1"), ("GET /item/{id}/tiles/region bad frame", "99")]
    {
        p.call(
            label,
            M::GET,
            &format!("item/{image_id}/tiles/region"),
            Some(&tok),
            &q(&[
                ("frame", frame),
                ("encoding", "pickle:5"),
                ("left", "3"),
                ("top", "2"),
                ("right", "11"),
                ("bottom", "7"),
            ]),
            Send::None,
        )
        .await;
    }

    // jobs
    let job_form = [("title", "t".to_string()), ("type", "cellpose_train".to_string())];
    p.call("POST /job with a login token", M::POST, "job", Some(&tok), &[], Send::Form(&job_form)).await;
    let minted = p
        .call(
            "POST /dev_support/job_token",
            M::POST,
            "dev_support/job_token",
            Some(&admin_tok),
            &q(&[("userId", &alice_id)]),
            Send::None,
        )
        .await;
    let creator = s(&minted["token"]);
    let job = p.call("POST /job", M::POST, "job", Some(&creator), &[], Send::Form(&job_form)).await;
    let job_id = s(&job["_id"]);
    let jp = format!("job/{job_id}");
    p.call("PUT /job 0 -> 3 refused", M::PUT, &jp, Some(&tok), &q(&[("status", "3")]), Send::None).await;
    p.call("PUT /job bad status", M::PUT, &jp, Some(&tok), &q(&[("status", "99")]), Send::None).await;
    p.call(
        "PUT /job running + progress + two-line log",
        M::PUT,
        &jp,
        Some(&tok),
        &q(&[
            ("status", "2"),
            ("progressTotal", "1"),
            ("progressCurrent", "0.25"),
            ("progressMessage", "m"),
            ("log", "a\nb"),
        ]),
        Send::None,
    )
    .await;
    p.call("PUT /job log no Content-Length", M::PUT, &jp, Some(&tok), &q(&[("log", "c")]), Send::Bare).await;
    p.call("PUT /job log", M::PUT, &jp, Some(&tok), &q(&[("log", "d")]), Send::None).await;
    p.call("GET /job/{id} (log entries)", M::GET, &jp, Some(&tok), &[], Send::None).await;
    p.call("PUT /job other user", M::PUT, &jp, Some(&bob), &q(&[("log", "x")]), Send::None).await;
    p.call("PUT /job 2 -> 3", M::PUT, &jp, Some(&tok), &q(&[("status", "3")]), Send::None).await;
    p.call("PUT /job 3 -> 2 refused", M::PUT, &jp, Some(&tok), &q(&[("status", "2")]), Send::None).await;
    p.call("PUT /job 3 -> 3 no-op", M::PUT, &jp, Some(&tok), &q(&[("status", "3")]), Send::None).await;
    let job2 = p.call("POST /job", M::POST, "job", Some(&creator), &[], Send::Form(&job_form)).await;
    p.call(
        "PUT /job/{id}/cancel",
        M::PUT,
        &format!("job/{}/cancel", s(&job2["_id"])),
        Some(&tok),
        &[],
        Send::None,
    )
    .await;
    p.call("GET /job?statuses", M::GET, "job", Some(&tok), &q(&[("statuses", "[3]")]), Send::None).await;
    p.call(
        "GET /job/all admin",
        M::GET,
        "job/all",
        Some(&admin_tok),
        &q(&[("statuses", "[5]"), ("types", r#"["cellpose_train"]"#)]),
        Send::None,
    )
    .await;
    p.call("GET /job/all not admin", M::GET, "job/all", Some(&tok), &[], Send::None).await;
}

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
