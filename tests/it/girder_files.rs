//! Uploads, downloads and failure handling: the chunk-size rule, wrong offsets, dropped
//! connections resumed through `/file/offset`, 5xx retried, timeouts, and secrets kept out of
//! logs and errors.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cellpose_train_worker::girder::{Auth, GirderClient, GirderError, Secret};
use cellpose_train_worker::mock_girder::MockConfig;
use serde_json::{json, Value};

use super::girder_seed::{clear_requests, config, count, fault, requests, seeded, seeded_with};

const KIB: usize = 1024;

fn data(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i * 7 + i / 251) as u8).collect::<Vec<u8>>())
}

/// A mock whose minimum chunk is 4 KiB and a client sending 4 KiB chunks: uploads of a few
/// chunks stay small.
async fn small_chunks() -> (super::girder_seed::Seeded, GirderClient) {
    let s = seeded_with(MockConfig { upload_minimum_chunk_size: 4 * KIB as u64, ..Default::default() }).await;
    let token = s.alice.token().await.unwrap().unwrap();
    let mut cfg = config(&s.mock);
    cfg.upload_chunk_size = 4 * KIB;
    let client = GirderClient::new(cfg, Auth::Token(token)).unwrap();
    (s, client)
}

#[tokio::test]
async fn a_chunked_upload_arrives_byte_identical() {
    let (s, client) = small_chunks().await;
    let payload = data(10 * KIB + 123);
    let (item, file) = client
        .files()
        .upload_item(&s.dataset.id, "model.pt", payload.clone(), "application/octet-stream")
        .await
        .unwrap();
    assert_eq!((file.size, file.item_id.as_deref()), (payload.len() as u64, Some(item.id.as_str())));
    assert_eq!(client.files().download(&file.id).await.unwrap(), payload);
    assert_eq!(count(&requests(&s.mock).await, "POST", "/file/chunk"), 3);
    assert_eq!(client.items().get(&item.id).await.unwrap().size, payload.len() as u64);
}

#[tokio::test]
async fn a_chunk_under_the_servers_minimum_is_refused_with_the_fix_named() {
    let s = seeded().await; // 5 MiB minimum
    let token = s.alice.token().await.unwrap().unwrap();
    let mut cfg = config(&s.mock);
    cfg.upload_chunk_size = 1024 * KIB;
    let client = GirderClient::new(cfg, Auth::Token(token)).unwrap();
    let err = client
        .files()
        .upload_item(&s.dataset.id, "big.bin", data(3 * 1024 * KIB), "application/octet-stream")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("Chunk is smaller than the minimum size.") && message.contains("upload_chunk_size"),
        "{message}"
    );
    // the failed upload's item is cleaned up
    assert!(client.items().list(&s.dataset.id).await.unwrap().is_empty());
}

#[tokio::test]
async fn wrong_offset_and_short_chunk_answers_match_the_record() {
    let (s, client) = small_chunks().await;
    let token = client.token().await.unwrap().unwrap();
    let http = reqwest::Client::new();
    let api = &s.mock.api_url;
    let init: Value = http
        .post(format!("{api}/file?parentType=folder&parentId={}&name=x.bin&size=10000", s.dataset.id))
        .header("Girder-Token", token.expose())
        // a body-less POST must say so: Girder answers 411 without a Content-Length
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload = init["_id"].as_str().unwrap();
    let post = |offset: usize, body: Vec<u8>| {
        http.post(format!("{api}/file/chunk?uploadId={upload}&offset={offset}"))
            .header("Girder-Token", token.expose())
            .body(body)
            .send()
    };
    let short = post(0, vec![0; 100]).await.unwrap();
    assert_eq!(short.status(), 400);
    assert_eq!(
        short.json::<Value>().await.unwrap(),
        json!({"message": "Chunk is smaller than the minimum size.", "type": "validation"})
    );
    let first: Value = post(0, vec![1; 5000]).await.unwrap().json().await.unwrap();
    assert_eq!(first["received"], 5000);
    let wrong = post(5, vec![0; 3]).await.unwrap();
    assert_eq!(wrong.status(), 400);
    assert_eq!(
        wrong.json::<Value>().await.unwrap(),
        json!({"message": "Server has received 5000 bytes, but client sent offset 5.", "type": "rest"})
    );
    assert_eq!(client.files().offset(upload).await.unwrap(), 5000);
    let done: Value = post(5000, vec![2; 5000]).await.unwrap().json().await.unwrap();
    assert_eq!((done["_modelType"].as_str(), done["size"].as_u64()), (Some("file"), Some(10000)));
}

#[tokio::test]
async fn a_dropped_chunk_is_resumed_from_the_servers_offset() {
    let (s, client) = small_chunks().await;
    let payload = data(13 * KIB);
    // the second chunk's connection drops before Girder sees it; the third one lands but its
    // answer is lost: both times the client asks /file/offset and carries on
    fault(&s.mock, json!({"method": "POST", "path": "/file/chunk$", "count": 1, "drop": true})).await;
    let first = client
        .files()
        .upload_item(&s.dataset.id, "a.bin", payload.clone(), "application/octet-stream")
        .await
        .unwrap();
    fault(
        &s.mock,
        json!({"method": "POST", "path": "/file/chunk$", "count": 1, "drop": true, "after": true}),
    )
    .await;
    let second = client
        .files()
        .upload_item(&s.dataset.id, "b.bin", payload.clone(), "application/octet-stream")
        .await
        .unwrap();
    for (_, file) in [first, second] {
        assert_eq!(client.files().download(&file.id).await.unwrap(), payload);
    }
    let log = requests(&s.mock).await;
    assert_eq!(count(&log, "GET", "/file/offset"), 2, "{log:?}");
}

#[tokio::test]
async fn a_lost_answer_to_the_final_chunk_still_yields_the_file() {
    let (s, client) = small_chunks().await;
    let payload = data(3 * KIB); // one chunk, which is the final one
    fault(
        &s.mock,
        json!({"method": "POST", "path": "/file/chunk$", "count": 1, "drop": true, "after": true}),
    )
    .await;
    let (item, file) = client
        .files()
        .upload_item(&s.dataset.id, "c.bin", payload.clone(), "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(client.items().files(&item.id).await.unwrap().len(), 1, "no duplicate upload");
    assert_eq!(client.files().download(&file.id).await.unwrap(), payload);
}

#[tokio::test]
async fn a_5xx_chunk_is_resumed_and_a_5xx_get_is_retried() {
    let (s, client) = small_chunks().await;
    fault(&s.mock, json!({"method": "POST", "path": "/file/chunk$", "count": 1, "status": 503})).await;
    let (_, file) = client
        .files()
        .upload_item(&s.dataset.id, "d.bin", data(9 * KIB), "application/octet-stream")
        .await
        .unwrap();
    clear_requests(&s.mock).await;
    fault(&s.mock, json!({"method": "GET", "path": "/user/me$", "count": 2, "status": 503})).await;
    client.users().me().await.unwrap();
    let log = requests(&s.mock).await;
    assert_eq!(
        log.iter().filter(|(m, p, _)| m == "GET" && p.ends_with("/user/me")).map(|l| l.2).collect::<Vec<_>>(),
        [Some(503), Some(503), Some(200)]
    );
    fault(
        &s.mock,
        json!({"method": "GET", "path": format!("/file/{}/download$", file.id), "count": 1, "drop": true}),
    )
    .await;
    assert_eq!(client.files().download(&file.id).await.unwrap().len(), 9 * KIB);
}

#[tokio::test]
async fn retries_are_bounded_and_posts_are_not_repeated() {
    let s = seeded().await;
    fault(&s.mock, json!({"path": "/user/me$", "count": 100, "status": 502})).await;
    let err = s.alice.users().me().await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    assert!(err.is_transient());
    assert_eq!(count(&requests(&s.mock).await, "GET", "/user/me"), 5, "1 try + max_retries 4");
    clear_requests(&s.mock).await;
    fault(&s.mock, json!({"method": "POST", "path": "/item$", "count": 1, "status": 503})).await;
    let err = s.alice.items().create(&s.dataset.id, "x", None).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(count(&requests(&s.mock).await, "POST", "/item"), 1, "a POST is never blindly retried");
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let s = seeded().await;
    let token = s.alice.token().await.unwrap().unwrap();
    let mut cfg = config(&s.mock);
    cfg.timeout = Duration::from_millis(300);
    let client = GirderClient::new(cfg.clone(), Auth::Token(token.clone())).unwrap();
    fault(&s.mock, json!({"path": "/user/me$", "count": 1, "delay_ms": 2000})).await;
    assert_eq!(client.users().me().await.unwrap().login, "alice");
    cfg.retry = cellpose_train_worker::girder::RetryPolicy::none();
    let once = GirderClient::new(cfg, Auth::Token(token)).unwrap();
    fault(&s.mock, json!({"path": "/user/me$", "count": 1, "delay_ms": 2000})).await;
    let err = once.users().me().await.unwrap_err();
    assert!(matches!(err, GirderError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn a_file_streams_to_disk() {
    let (s, client) = small_chunks().await;
    let payload = data(50 * KIB);
    let (_, file) = client
        .files()
        .upload_item(&s.dataset.id, "e.bin", payload.clone(), "application/octet-stream")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("e.bin");
    fault(&s.mock, json!({"method": "GET", "path": "/download$", "count": 1, "status": 500})).await;
    assert_eq!(client.files().download_to_path(&file.id, &dest).await.unwrap(), payload.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), payload.to_vec());
    assert!(!dir.path().join("e.bin.part").exists());
}

/// Collects everything tracing writes, at every level, for the test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn tokens_and_keys_never_reach_logs_or_errors() {
    let s = seeded().await;
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let key = s.alice_key.clone();
    let client = GirderClient::new(config(&s.mock), Auth::ApiKey(key.clone())).unwrap();
    fault(&s.mock, json!({"path": "/user/me$", "count": 1, "status": 503})).await;
    client.users().me().await.unwrap();
    let token = client.token().await.unwrap().unwrap();
    let mut errors = vec![
        client.folders().get("000000000000000000000000").await.unwrap_err(),
        client.with_token(Secret::new("x")).jobs().list_all(&Default::default()).await.unwrap_err(),
    ];
    let gone = s.mock.base_url.clone();
    s.mock.shutdown().await;
    let mut cfg = cellpose_train_worker::girder::GirderConfig::new(format!("{gone}/api/v1"));
    cfg.retry = cellpose_train_worker::girder::RetryPolicy::none();
    errors.push(GirderClient::new(cfg, Auth::ApiKey(key.clone())).unwrap().users().me().await.unwrap_err());
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying Girder call"), "the retry is logged: {logs}");
    for err in &errors {
        let text = format!("{err} {err:?}");
        assert!(!text.contains(key.expose()) && !text.contains(token.expose()), "{text}");
    }
    assert!(!logs.contains(key.expose()) && !logs.contains(token.expose()), "{logs}");
}

#[tokio::test]
async fn an_admin_lowers_the_minimum_chunk_size_and_faults_can_be_cleared() {
    let s = seeded().await;
    let http = reqwest::Client::new();
    let setting = |token: Secret| {
        http.put(format!("{}/system/setting", s.mock.api_url))
            .header("Girder-Token", token.expose().to_string())
            .form(&[("key", "core.upload_minimum_chunk_size"), ("value", "4096")])
            .send()
    };
    let refused = setting(s.alice.token().await.unwrap().unwrap()).await.unwrap();
    assert_eq!(refused.status(), 403);
    let ok = setting(s.admin.token().await.unwrap().unwrap()).await.unwrap();
    assert_eq!(ok.text().await.unwrap(), "true");
    let token = s.alice.token().await.unwrap().unwrap();
    let mut cfg = config(&s.mock);
    cfg.upload_chunk_size = 4 * KIB;
    let client = GirderClient::new(cfg, Auth::Token(token)).unwrap();
    let payload = data(9 * KIB);
    let (_, file) = client
        .files()
        .upload_item(&s.dataset.id, "f.bin", payload.clone(), "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(client.files().download(&file.id).await.unwrap(), payload);
    fault(&s.mock, json!({"path": "/user/me$", "count": 5, "status": 500})).await;
    http.delete(format!("{}/mock/faults", s.mock.base_url)).send().await.unwrap();
    assert_eq!(client.users().me().await.unwrap().login, "alice", "cleared faults no longer fire");
}
