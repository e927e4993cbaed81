//! Issue 26, problem 1: the model replace protocol (`src/job/upload.rs`) against the mock and a
//! real Girder 5.0.21, with a fault at every step. Every POST, PUT and DELETE of a replace fails
//! once, as a refused request (502, nothing happened) and as a lost answer (Girder acted, the
//! worker saw a 502), in one job and again in the next job of the same name; then a healthy job.
//! After every job: the user has a complete model of that name (the old or the new), or the new
//! one under a name the error message gives exactly; no complete model that the job did not
//! create is gone; and the message and `info` say what the folder really holds.
//!
//! Faults are injected the same way on both servers (`POST /mock/faults`: the mock's own layer,
//! and `tests/real_girder/faults.py` in front of the real Girder). The client retries nothing
//! (`RetryPolicy::none()`), so one injected failure is one failed step.

use std::time::Duration;

use bytes::Bytes;
use cellpose_train_worker::girder::{Auth, GirderClient, GirderConfig, Item, RetryPolicy};
use cellpose_train_worker::job::{store, JobError};
use cellpose_train_worker::mock_girder::{spawn_mock, MockConfig};
use serde_json::{json, Value};

use super::girder_seed::{fault, fault_at, new_user};
use super::real_girder::RealGirder;

const ROOT: &str = ".cellpose";
const CHUNK: usize = 4096;

/// One server with a user whose client retries nothing and uploads in 4 KiB chunks.
struct Server {
    label: &'static str,
    base_url: String,
    client: GirderClient,
    user_id: String,
}

async fn server(label: &'static str, api_url: &str, base_url: &str) -> Server {
    let mut cfg = GirderConfig::new(api_url);
    cfg.timeout = Duration::from_secs(20);
    cfg.retry = RetryPolicy::none();
    cfg.upload_chunk_size = CHUNK;
    let anonymous = GirderClient::new(cfg.clone(), Auth::Anonymous).unwrap();
    let (user, token) = anonymous.users().create(&new_user("owner")).await.unwrap();
    let token = token.expect("the first user is logged in");
    // the first user is the site admin: small chunks are allowed (Girder's minimum is 5 MiB)
    let resp = reqwest::Client::new()
        .put(format!("{api_url}/system/setting"))
        .query(&[("key", "core.upload_minimum_chunk_size"), ("value", "0")])
        .header("Girder-Token", token.expose())
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{label}: setting the chunk size: {}", resp.status());
    Server { label, base_url: base_url.into(), client: anonymous.with_token(token), user_id: user.id }
}

impl Server {
    async fn clear_faults(&self) {
        let resp =
            reqwest::Client::new().delete(format!("{}/mock/faults", self.base_url)).send().await.unwrap();
        assert!(resp.status().is_success(), "{}: clearing faults", self.label);
    }

    async fn upload(&self, name: &str, bytes: &Bytes, tag: &str) -> Result<Item, JobError> {
        store::upload_model_in(&self.client, &self.user_id, ROOT, name, bytes.clone(), tag).await
    }

    /// The items of model `name` (the name itself and its temporary names), with the bytes of
    /// each that holds a file.
    async fn family(&self, name: &str) -> Vec<Snap> {
        let folder = store::family_folder(&self.client, &self.user_id, ROOT, &["models"]).await.unwrap();
        let prefix = format!("{name}.uploading-");
        let mut out = Vec::new();
        for item in self.client.items().list(&folder.id).await.unwrap() {
            if item.name != name && !item.name.starts_with(&prefix) {
                continue;
            }
            let bytes = if item.size > 0 {
                Some(self.client.items().download(&item.id).await.unwrap())
            } else {
                None
            };
            out.push(Snap { id: item.id, name: item.name, bytes });
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Snap {
    id: String,
    name: String,
    /// `None`: an empty item (an upload that never finished).
    bytes: Option<Bytes>,
}

/// A model file of ~10 KiB (three chunks), different for each `seed`.
fn model(seed: u8) -> Bytes {
    Bytes::from(
        (0..10 * 1024 + 123)
            .map(|i: usize| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

/// A step of a replace, as a fault rule matches it.
#[derive(Debug, Clone, Copy)]
struct StepFault {
    label: &'static str,
    method: &'static str,
    path: &'static str,
    skip: u32,
}

const ITEM_ID: &str = "^/api/v1/item/[0-9a-f]{24}$";

/// Every mutating request of a replace of an existing model, in order (the mock's request log
/// holds a healthy replace to this list).
const STEPS: [StepFault; 9] = [
    StepFault { label: "POST folder .cellpose", method: "POST", path: "^/api/v1/folder$", skip: 0 },
    StepFault { label: "POST folder models", method: "POST", path: "^/api/v1/folder$", skip: 1 },
    StepFault { label: "POST item", method: "POST", path: "^/api/v1/item$", skip: 0 },
    StepFault { label: "POST file", method: "POST", path: "^/api/v1/file$", skip: 0 },
    StepFault { label: "chunk 1", method: "POST", path: "^/api/v1/file/chunk$", skip: 0 },
    StepFault { label: "chunk 2", method: "POST", path: "^/api/v1/file/chunk$", skip: 1 },
    StepFault { label: "chunk 3", method: "POST", path: "^/api/v1/file/chunk$", skip: 2 },
    StepFault { label: "DELETE old", method: "DELETE", path: ITEM_ID, skip: 0 },
    StepFault { label: "PUT rename", method: "PUT", path: ITEM_ID, skip: 0 },
];

impl StepFault {
    fn spec(self, after: bool, count: u32) -> Value {
        json!({"method": self.method, "path": self.path, "skip": self.skip, "count": count, "status": 502, "after": after})
    }
}

/// Broken promises, kept to the end so that one run lists all of them: `lost` (a model of the
/// name, or one the job did not create, is gone), `untrue` (the message says something else
/// than the folder holds).
#[derive(Default)]
struct Findings {
    lost: Vec<String>,
    untrue: Vec<String>,
}

impl Findings {
    fn assert_none(&self, label: &str) {
        assert!(
            self.lost.is_empty() && self.untrue.is_empty(),
            "{label}: {} jobs lost a model, {} said something untrue:\n{}\n{}",
            self.lost.len(),
            self.untrue.len(),
            self.lost.join("\n"),
            self.untrue.join("\n")
        );
    }
}

/// Checks the three promises after one job that stored `new` as `name`; `before` is the family
/// as the job found it. Returns the failure text (message and info) when the job failed.
fn check(
    found: &mut Findings,
    case: &str,
    name: &str,
    (before, after): (&[Snap], &[Snap]),
    result: &Result<Item, JobError>,
    new: &Bytes,
) -> Option<String> {
    let complete = |s: &[Snap]| s.iter().filter(|i| i.bytes.is_some()).cloned().collect::<Vec<Snap>>();
    let (had, has) = (complete(before), complete(after));
    let at_name: Vec<&Snap> = after.iter().filter(|i| i.name == name).collect();
    let text = result.as_ref().err().map(|e| format!("{e}\ninfo: {}", e.info()));
    let named = |n: &str| text.as_deref().is_some_and(|t| t.contains(&format!("`{n}`")));
    let new_at = has.iter().find(|i| i.bytes.as_ref() == Some(new));
    let mut lost = |why: String| found.lost.push(format!("{case}: {why}\n  {text:?}\n  {after:?}"));
    // 1. a complete model of the name, or the new one under a name the message gives
    match result {
        Ok(item) => {
            let one = matches!(at_name.as_slice(), [i] if i.id == item.id && i.bytes.as_ref() == Some(new));
            if !one {
                lost(format!("stored, but `{name}` is not exactly the new model"));
            }
        }
        Err(_) if !had.is_empty() => {
            let kept = at_name.iter().any(|i| i.bytes.is_some())
                || has.iter().any(|i| named(&i.name) && i.name != name);
            if !kept {
                lost(format!("no complete model of `{name}` and none named in the error"));
            }
        }
        Err(_) => {}
    }
    // 2. no complete model lost that this job did not replace
    for old in &had {
        let still = has.iter().any(|i| i.id == old.id && i.bytes == old.bytes);
        let replaced =
            old.name == name && (result.is_ok() || new_at.is_some_and(|n| n.name == name || named(&n.name)));
        if !(still || replaced) {
            lost(format!("the complete model `{}` ({}) is gone", old.name, old.id));
        }
    }
    // 3. the message says what the folder holds
    let text = text.clone()?;
    let mut untrue = |why: String| found.untrue.push(format!("{case}: {why}\n  {text}"));
    if text.contains("Nothing in Girder was changed.") {
        let same = before.len() == after.len()
            && before.iter().all(|x| after.iter().any(|y| y.id == x.id && y.bytes == x.bytes));
        if !same {
            untrue(format!("`nothing changed`, but {before:?} became {after:?}"));
        }
        return Some(text);
    }
    let mut wants = Vec::new();
    if at_name.is_empty() {
        wants.push(format!("No model named `{name}` is in Girder now"));
        if text.contains("unchanged") {
            untrue("nothing is unchanged".into());
        }
    } else if at_name.iter().any(|i| before.iter().any(|b| b.id == i.id && b.bytes == i.bytes)) {
        wants.push(format!("Your model `{name}` in Girder is unchanged"));
    }
    wants.push(match new_at {
        Some(n) => format!("The new model is stored in Girder as `{}`", n.name),
        None => "The new model was not stored in Girder".into(),
    });
    for want in wants {
        if !text.contains(&want) {
            untrue(format!("does not say `{want}`"));
        }
    }
    for other in has.iter().filter(|i| i.name != name) {
        if !named(&other.name) {
            untrue(format!("does not name the complete `{}`", other.name));
        }
    }
    Some(text)
}

/// One job storing `bytes` as `name` under the faults `specs`, checked; returns the error text.
async fn job(
    s: &Server,
    found: &mut Findings,
    case: &str,
    (name, bytes, tag): (&str, &Bytes, &str),
    specs: &[Value],
) -> Option<String> {
    let before = s.family(name).await;
    for spec in specs {
        fault_at(&s.base_url, spec.clone()).await;
    }
    let result = s.upload(name, bytes, tag).await;
    s.clear_faults().await;
    let after = s.family(name).await;
    let case = format!("{}: {case}", s.label);
    let text = check(found, &case, name, (&before, &after), &result, bytes);
    eprintln!("{case}: {}", text.as_deref().unwrap_or("stored"));
    // this job's own empty temporary item may stay only when its removal was made to fail
    let ours = format!("{name}.uploading-{tag}");
    let own_empty = after.iter().filter(|i| i.name.starts_with(&ours) && i.bytes.is_none()).count();
    let delete_faulted = specs.iter().any(|s| s["method"] == "DELETE");
    if own_empty > 0 && !(result.is_err() && delete_faulted) {
        found.untrue.push(format!("{case}: left its empty item behind: {after:?}"));
    }
    text
}

/// Every step failing once in a job and again in the next job of the same name, refused and with
/// its answer lost; a fault in the roll-back too; the sequence; then a healthy job.
async fn every_step_fails(s: &Server) {
    let mut found = Findings::default();
    let f = &mut found;
    // issue 26: B's rename fails (the old model is gone, B's is complete under its temporary
    // name), then C's upload fails: C must not delete B's model, and must say where it is
    let name = "issue";
    s.upload(name, &model(1), "seed").await.unwrap();
    let b =
        job(s, f, "issue: job B rename refused", (name, &model(2), "jobb"), &[STEPS[8].spec(false, 1)]).await;
    let temp = s.family(name).await.into_iter().find(|i| i.bytes.as_ref() == Some(&model(2)));
    let c =
        job(s, f, "issue: job C chunk refused", (name, &model(3), "jobc"), &[STEPS[4].spec(false, 1)]).await;
    match (&b, &temp, &c) {
        (Some(_), Some(temp), Some(c)) => {
            let earlier = format!("An earlier upload's model is stored as `{}`", temp.name);
            if !c.contains(&earlier) || !c.contains(&format!("rename it to `{name}`")) {
                f.untrue.push(format!("issue: job C does not point to B's model: {c}"));
            }
        }
        _ => f.lost.push(format!("issue: B failed: {b:?}, B's model in Girder: {temp:?}, C failed: {c:?}")),
    }
    let d = job(s, f, "issue: healthy job D", (name, &model(4), "jobd"), &[]).await;
    assert!(d.is_none(), "{d:?}");
    let left = s.family(name).await;
    if let Some(temp) = temp.filter(|t| !left.iter().any(|i| i.id == t.id)) {
        f.lost.push(format!("issue: B's model {} did not outlive D: it is not D's to delete", temp.name));
    }

    let mut cases: Vec<(String, Vec<Value>)> = Vec::new();
    for step in STEPS {
        for after in [false, true] {
            let how = if after { "answer lost" } else { "refused" };
            cases.push((format!("{} {how}", step.label), vec![step.spec(after, 1)]));
        }
    }
    // the roll-back's own DELETE fails too
    let delete = STEPS[7];
    cases.push(("DELETE old and its roll-back refused".into(), vec![delete.spec(false, 2)]));
    cases.push((
        "chunk 2 and the roll-back refused".into(),
        vec![STEPS[5].spec(false, 1), delete.spec(false, 1)],
    ));
    for (i, (label, specs)) in cases.iter().enumerate() {
        let name = format!("m{i:02}");
        s.upload(&name, &model(1), "seed")
            .await
            .unwrap_or_else(|e| panic!("{}: seeding {name}: {e}", s.label));
        job(s, f, &format!("{label}, job B"), (&name, &model(2), "jobb"), specs).await;
        job(s, f, &format!("{label}, job C"), (&name, &model(3), "jobc"), specs).await;
        let done = job(s, f, &format!("{label}, healthy job D"), (&name, &model(4), "jobd"), &[]).await;
        assert!(done.is_none(), "{}: {label}: the healthy job failed: {done:?}", s.label);
    }
    found.assert_none(s.label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_of_a_replace_failing_once_or_twice_loses_no_model_on_the_mock() {
    let mock = spawn_mock(MockConfig::default()).await.unwrap();
    let s = server("mock", &mock.api_url, &mock.base_url).await;
    // the step list is every mutating request of a healthy replace
    s.upload("probe", &model(1), "seed").await.unwrap();
    reqwest::Client::new().delete(format!("{}/mock/requests", mock.base_url)).send().await.unwrap();
    s.upload("probe", &model(2), "jobb").await.unwrap();
    let log: Vec<Value> =
        reqwest::get(format!("{}/mock/requests", mock.base_url)).await.unwrap().json().await.unwrap();
    let mutating: Vec<(String, String)> = log
        .iter()
        .filter(|r| r["method"] != "GET")
        .map(|r| (r["method"].as_str().unwrap().to_string(), r["path"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(mutating.len(), STEPS.len(), "{mutating:?}");
    for (i, ((method, path), step)) in mutating.iter().zip(STEPS).enumerate() {
        let matches = regex::Regex::new(step.path).unwrap().is_match(path);
        let nth = mutating[..i]
            .iter()
            .filter(|(m, p)| m == method && regex::Regex::new(step.path).unwrap().is_match(p))
            .count();
        assert!(
            method == step.method && matches && nth == step.skip as usize,
            "step {i} is {method} {path}, not {step:?}"
        );
    }
    every_step_fails(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_of_a_replace_failing_once_or_twice_loses_no_model_on_a_real_girder() {
    let real = RealGirder::start();
    let s = server("real Girder", &real.api_url, &real.base_url).await;
    every_step_fails(&s).await;
    let stderr = real.stderr();
    assert!(!stderr.contains("Traceback"), "the real Girder failed:\n{stderr}");
}

/// The sequence through the training job (what NimbusImage shows), first half: job B's
/// rename fails after the old model was removed. The error says the old model is gone and where
/// the new one is, and `info` does not claim the old model is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_rename_fails_says_the_old_model_is_gone_and_where_the_new_one_is() {
    let (f, values, settings) = keep_me().await;
    // every rename fails (retried until the budget is spent)
    fault(&f.mock, json!({"method": "PUT", "path": ITEM_ID, "count": 100, "status": 502})).await;
    let (result, _) = f.run_as(&f.world.user, &f.world.dataset_id, values, settings).await;
    clear_faults(&f.mock).await;
    let err = result.expect_err("the rename was meant to fail");
    let JobError::ModelKept { kept, .. } = &err else { panic!("{err:?}") };
    let (message, info) = (err.to_string(), err.info());
    let models = f.folder("models").await;
    assert!(!models.iter().any(|m| m.1 == "keep-me"), "the old model was removed: {models:?}");
    assert!(!info.contains("unchanged"), "the old model is gone, yet: {info}");
    let temp = models.iter().find(|m| m.1.starts_with("keep-me.uploading-jobtest")).expect("the new model");
    assert!(message.contains("No model named `keep-me` is in Girder now"), "{message}");
    assert!(message.contains(&format!("The new model is stored in Girder as `{}`", temp.1)), "{message}");
    assert!(info.contains(&format!("Rename `{}` to `keep-me`", temp.1)), "{info}");
    let stored = f.world.user.files().download(&temp.2[0].0).await.unwrap();
    assert_eq!(stored, std::fs::read(kept).unwrap(), "Girder holds the trained model");
}

/// Second half: job C of the same name finds job B's complete model under its temporary name and
/// no `keep-me`; C's upload fails. C leaves B's model alone (the old protocol deleted it as a
/// "stale partial upload", leaving no model of that name in Girder) and its error points to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_upload_fails_leaves_an_earlier_jobs_model_alone_and_names_it() {
    let (f, values, settings) = keep_me().await;
    // what job B left: its model complete under its temporary name, the old one removed
    let user = &f.world.user;
    let folder = store::cellpose_folder(user, &f.world.user_id, &["models"]).await.unwrap();
    let (old, b_bytes) = f.model("keep-me").await;
    let b_name = "keep-me.uploading-jobb-5e1f0a";
    let (b_item, _) = user
        .files()
        .upload_item(&folder.id, b_name, b_bytes.clone(), "application/octet-stream")
        .await
        .unwrap();
    user.items().delete(&old.0).await.unwrap();

    fault(&f.mock, json!({"method": "POST", "path": "^/api/v1/file/chunk$", "count": 100, "status": 500}))
        .await;
    let (result, _) = f.run_as(user, &f.world.dataset_id, values, settings).await;
    clear_faults(&f.mock).await;
    let err = result.expect_err("the upload was meant to fail");
    let models = f.folder("models").await;
    let b = models.iter().find(|m| m.0 == b_item.id);
    assert!(b.is_some(), "job B's model was deleted by job C: {models:?}");
    assert_eq!(user.files().download(&b.unwrap().2[0].0).await.unwrap(), b_bytes);
    let (message, info) = (err.to_string(), err.info());
    assert!(!info.contains("unchanged"), "there is no `keep-me`, yet: {info}");
    assert!(message.contains("No model named `keep-me` is in Girder now"), "{message}");
    assert!(message.contains(&format!("An earlier upload's model is stored as `{b_name}`")), "{message}");
    assert!(
        info.contains(&format!("The model stored as `{b_name}` is an earlier job's: rename it to `keep-me`")),
        "{info}"
    );
}

/// A job fixture with the user's model `keep-me` (the base's bytes), the interface values that
/// train `keep-me` for one epoch, and settings keeping the trained model in a work dir.
async fn keep_me() -> (super::job::Fixture, Value, cellpose_train_worker::config::Settings) {
    use super::job::{fixture, BASE, TINY};
    let f = fixture(96, 10, &TINY).await;
    let (_, old_bytes) = f.model(BASE).await;
    store::upload_model(&f.world.user, &f.world.user_id, "keep-me", old_bytes, "prep").await.unwrap();
    let values = cellpose_train_worker::demo::seed::interface_values(BASE, "keep-me", 1);
    let mut settings = f.settings();
    settings.paths.work_dir = Some(f.models_dir.path().join("work"));
    (f, values, settings)
}

async fn clear_faults(mock: &cellpose_train_worker::mock_girder::MockHandle) {
    reqwest::Client::new().delete(format!("{}/mock/faults", mock.base_url)).send().await.unwrap();
}
