//! Behaviour of a real Girder 5 that a mock easily gets wrong (`shared/real-girder/README.md`):
//! 411 for a body-less POST/PUT without `Content-Length`, one log entry per `PUT /job?log=`, and
//! `DELETE /folder` refused with 503 when no Celery worker serves Girder's `local` queue.

use cellpose_train_worker::girder::{GirderError, JobUpdate, NewJob, ParentType};
use cellpose_train_worker::mock_girder::MockConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::girder_seed::{creator, seeded, seeded_with};

/// Sends `head` (request line and headers, without the blank line) and `body` over a fresh
/// connection, bytes as given (no client adds headers), and returns the status and body.
async fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_body_less_post_or_put_without_content_length_is_411() {
    let s = seeded().await;
    let token = s.alice.token().await.unwrap().expect("alice has a token");
    let auth = format!("Girder-Token: {}", token.expose());
    let folder = format!("/api/v1/folder?parentType=folder&parentId={}&name=made", s.private.id);
    let creator = creator(&s, &s.alice).await;
    let job = creator
        .jobs()
        .create(&NewJob { title: "t".into(), job_type: "x".into(), ..Default::default() })
        .await
        .unwrap();

    for head in [
        format!("POST {folder} HTTP/1.1\r\n{auth}"),
        format!("PUT /api/v1/job/{}?log=x HTTP/1.1\r\n{auth}", job.id),
    ] {
        let (status, body) = raw(s.mock.addr, &head, b"").await;
        assert_eq!(status, 411, "{head}: {body}");
        assert!(body.contains("Client must specify Content-Length"), "{body}");
    }
    let log = s.alice.jobs().get(&job.id).await.unwrap().log.unwrap_or_default();
    assert!(log.is_empty(), "a refused PUT appended {log:?}");

    // with Content-Length: 0, or a chunked body, the same requests are served
    let (status, body) =
        raw(s.mock.addr, &format!("POST {folder} HTTP/1.1\r\n{auth}\r\nContent-Length: 0"), b"").await;
    assert_eq!(status, 200, "{body}");
    let chunked =
        format!("PUT /api/v1/job/{}?log=x HTTP/1.1\r\n{auth}\r\nTransfer-Encoding: chunked", job.id);
    let (status, body) = raw(s.mock.addr, &chunked, b"0\r\n\r\n").await;
    assert_eq!(status, 200, "{body}");
    // a GET or DELETE needs no length
    let (status, _) = raw(s.mock.addr, &format!("GET /api/v1/job/{} HTTP/1.1\r\n{auth}", job.id), b"").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn one_put_job_log_is_one_entry_however_many_lines_it_holds() {
    let s = seeded().await;
    let jobs = s.alice.jobs();
    // a login token may not create jobs (as in Girder); the admin mints one that may
    let creator = creator(&s, &s.alice).await;
    let job = creator
        .jobs()
        .create(&NewJob { title: "t".into(), job_type: "x".into(), ..Default::default() })
        .await
        .unwrap();
    let text = "first line\nsecond line\nthird line\n";
    jobs.update(&job.id, &JobUpdate { log: Some(text.into()), ..Default::default() }).await.unwrap();
    jobs.update(&job.id, &JobUpdate { log: Some("more\n".into()), ..Default::default() }).await.unwrap();
    let log = jobs.get(&job.id).await.unwrap().log.unwrap_or_default();
    assert_eq!(log, vec![text.to_string(), "more\n".to_string()]);
}

#[tokio::test]
async fn delete_folder_is_503_without_a_local_worker_while_items_delete_at_once() {
    let s = seeded().await;
    let folder =
        s.alice.folders().create(ParentType::Folder, &s.private.id, "doomed", None, false).await.unwrap();
    let item = s.alice.items().create(&folder.id, "thing", None).await.unwrap();

    let err = s.alice.folders().delete(&folder.id).await.unwrap_err();
    let GirderError::Http { status: 503, message, kind, .. } = &err else { panic!("{err:?}") };
    assert_eq!(message, "No local worker is available to process this request.");
    assert_eq!(kind.as_deref(), Some("rest"));
    assert!(s.alice.folders().get(&folder.id).await.is_ok(), "the refused delete removed the folder");

    s.alice.items().delete(&item.id).await.unwrap();
    assert!(s.alice.items().list(&folder.id).await.unwrap().is_empty());

    // a Girder with a Celery worker on its `local` queue deletes folders
    let s = seeded_with(MockConfig { local_worker: true, ..Default::default() }).await;
    let folder =
        s.alice.folders().create(ParentType::Folder, &s.private.id, "doomed", None, false).await.unwrap();
    s.alice.folders().delete(&folder.id).await.unwrap();
    assert!(s.alice.folders().get(&folder.id).await.is_err());
}
