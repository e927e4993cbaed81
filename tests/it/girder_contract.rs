//! The Girder client against the mock: auth, errors, folders, items, resource lookup, worker
//! interfaces. Uploads, jobs, annotations and tiles have their own files.

use std::time::Duration;

use bytes::Bytes;
use cellpose_train_worker::girder::{Auth, GirderClient, GirderError, ParentType, Resource, Secret};
use serde_json::json;

use super::girder_seed::{config, count, raw_get, requests, seeded};

#[tokio::test]
async fn token_api_key_and_login_all_identify_the_user() {
    let s = seeded().await;
    assert_eq!(s.alice.users().me().await.unwrap().login, "alice");
    let by_key = GirderClient::new(config(&s.mock), Auth::ApiKey(s.alice_key.clone())).unwrap();
    assert_eq!(by_key.users().me().await.unwrap().id, s.alice_user.id);
    let token = by_key.token().await.unwrap().expect("a token from the key");
    assert_eq!(by_key.with_token(token).users().me().await.unwrap().login, "alice");
    // Girder answers user/me without a token with 200 null; the client calls that unauthorized
    assert!(matches!(s.anonymous.users().me().await, Err(GirderError::Unauthorized { .. })));
    let wrong = s.anonymous.with_token(Secret::new("not-a-token"));
    assert!(matches!(wrong.users().me().await, Err(GirderError::Unauthorized { .. })));
}

#[tokio::test]
async fn a_bad_api_key_or_password_is_refused_with_a_clear_error() {
    let s = seeded().await;
    let bad = GirderClient::new(config(&s.mock), Auth::ApiKey(Secret::new("x".repeat(40)))).unwrap();
    let err = bad.users().me().await.unwrap_err();
    assert!(
        matches!(err, GirderError::InvalidApiKey { ref message } if message == "Invalid API key."),
        "{err:?}"
    );
    let err = GirderClient::login(config(&s.mock), "alice", &Secret::new("wrong")).await.unwrap_err();
    assert!(
        matches!(err, GirderError::Unauthorized { ref message, .. } if message == "Login failed."),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_api_key_token_is_renewed_before_it_expires() {
    let s = seeded().await;
    // a key whose tokens live 2 seconds: renewal is due after 1.6 s
    let key = s.alice.users().create_api_key("short", Some(2.0 / 86400.0)).await.unwrap();
    let client = GirderClient::new(config(&s.mock), Auth::ApiKey(key.key)).unwrap();
    client.users().me().await.unwrap();
    client.users().me().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    client.users().me().await.unwrap();
    let log = requests(&s.mock).await;
    assert_eq!(count(&log, "POST", "/api_key/token"), 2, "one exchange, one renewal: {log:?}");
    assert!(log.iter().all(|(_, _, status)| *status != Some(401)), "no request went out with a stale token");
}

#[tokio::test]
async fn no_token_is_401_and_another_users_folder_is_403() {
    let s = seeded().await;
    let err = s.anonymous.folders().get(&s.dataset.id).await.unwrap_err();
    let GirderError::Unauthorized { message, .. } = &err else { panic!("{err:?}") };
    assert_eq!(message, &format!("Read access denied for folder {} (user None).", s.dataset.id));
    let err = s.bob.items().list(&s.dataset.id).await.unwrap_err();
    assert!(matches!(err, GirderError::Forbidden { .. }), "{err:?}");
    assert_eq!(err.status(), Some(403));
    // the site admin may read it
    assert_eq!(s.admin.folders().get(&s.dataset.id).await.unwrap().name, "dataset1");
}

#[tokio::test]
async fn folders_are_found_created_and_reused_and_a_delete_is_refused_without_a_local_worker() {
    let s = seeded().await;
    // null metadata values are dropped, as Girder does
    assert_eq!(s.dataset.meta, json!({"subtype": "contrastDataset"}).as_object().unwrap().clone());
    let found = s.alice.folders().find(ParentType::Folder, &s.private.id, "dataset1").await.unwrap();
    assert_eq!(found.map(|f| f.id), Some(s.dataset.id.clone()));
    let err = s
        .alice
        .folders()
        .create(ParentType::Folder, &s.private.id, "dataset1", None, false)
        .await
        .unwrap_err();
    let GirderError::Http { status: 400, kind, field, message, .. } = &err else { panic!("{err:?}") };
    assert_eq!((kind.as_deref(), field.as_deref()), (Some("validation"), Some("name")));
    assert_eq!(message, "A folder with that name already exists here.");
    let models = s.alice.folders().ensure_path(&s.private.id, &[".cellpose", "models"]).await.unwrap();
    let again = s.alice.folders().ensure_path(&s.private.id, &[".cellpose", "models"]).await.unwrap();
    assert_eq!(models.id, again.id);
    let cellpose =
        s.alice.folders().find(ParentType::Folder, &s.private.id, ".cellpose").await.unwrap().unwrap();
    // a Girder without a Celery worker on its `local` queue refuses folder deletes (once: the
    // client does not retry a refusal that lasts); mock_fidelity covers a Girder with one
    let err = s.alice.folders().delete(&cellpose.id).await.unwrap_err();
    assert!(err.is_no_local_worker() && !err.is_transient(), "{err:?}");
    assert_eq!(count(&requests(&s.mock).await, "DELETE", &format!("/folder/{}", cellpose.id)), 1);
    assert_eq!(s.alice.folders().get(&models.id).await.unwrap().id, models.id);
}

#[tokio::test]
async fn items_are_listed_renamed_downloaded_and_deleted() {
    let s = seeded().await;
    let files = s.alice.files();
    let (a, _) = files
        .upload_item(
            &s.dataset.id,
            "notes.json",
            Bytes::from_static(b"{\"hello\": \"world\"}"),
            "application/json",
        )
        .await
        .unwrap();
    let (clash, _) = files
        .upload_item(&s.dataset.id, "notes.json", Bytes::from_static(b"second"), "text/plain")
        .await
        .unwrap();
    assert_eq!(clash.name, "notes.json (1)", "Girder renames a clashing item");
    let names: Vec<String> =
        s.alice.items().list(&s.dataset.id).await.unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["notes.json", "notes.json (1)"]);
    assert_eq!(s.alice.items().download(&a.id).await.unwrap(), Bytes::from_static(b"{\"hello\": \"world\"}"));
    let renamed = s.alice.items().rename(&clash.id, "second.txt").await.unwrap();
    assert_eq!(renamed.name, "second.txt");
    // a second file in the item makes the download a zip of <item>/<file>
    files.upload_to_item(&a.id, "more.txt", Bytes::from_static(b"more"), "text/plain").await.unwrap();
    let zip = s.alice.items().download(&a.id).await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip.to_vec())).unwrap();
    let mut entries: Vec<String> =
        (0..archive.len()).map(|i| archive.by_index(i).unwrap().name().to_string()).collect();
    entries.sort();
    assert_eq!(entries, ["notes.json/more.txt", "notes.json/notes.json"]);
    s.alice.items().delete(&a.id).await.unwrap();
    let err = s.alice.items().get(&a.id).await.unwrap_err();
    assert_eq!(err.girder_message(), Some(format!("Invalid item id ({}).", a.id).as_str()));
    assert_eq!(s.alice.items().list(&s.dataset.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn single_file_download_keeps_girders_headers() {
    let s = seeded().await;
    let (item, _) = s
        .alice
        .files()
        .upload_item(&s.dataset.id, "n.json", Bytes::from_static(b"{}"), "application/json")
        .await
        .unwrap();
    let token = s.alice.token().await.unwrap();
    let resp = raw_get(&s.mock, &format!("item/{}/download", item.id), token.as_ref()).await;
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["content-disposition"], "attachment; filename=\"n.json\"");
    let resp = raw_get(&s.mock, &format!("item?folderId={}", s.dataset.id), token.as_ref()).await;
    assert_eq!(resp.headers()["girder-total-count"], "1");
}

#[tokio::test]
async fn resource_lookup_finds_folders_and_items_by_path() {
    let s = seeded().await;
    let (item, _) = s
        .alice
        .files()
        .upload_item(&s.dataset.id, "a.txt", Bytes::from_static(b"a"), "text/plain")
        .await
        .unwrap();
    let r = s.alice.resources();
    assert!(
        matches!(r.lookup("/user/alice/Private/dataset1").await.unwrap(), Resource::Folder(f) if f.id == s.dataset.id)
    );
    assert!(
        matches!(r.lookup("/user/alice/Private/dataset1/a.txt").await.unwrap(), Resource::Item(i) if i.id == item.id)
    );
    let err = r.lookup("/user/alice/Private/nope").await.unwrap_err();
    assert_eq!(err.girder_message(), Some("Path not found: user/alice/Private/nope"));
    assert!(r.find("/user/alice/Private/nope").await.unwrap().is_none());
}

#[tokio::test]
async fn worker_interfaces_round_trip() {
    let s = seeded().await;
    let interface = json!({"Diameter": {"type": "number", "min": 5, "max": 200, "default": 30}});
    let stored = s.alice.worker_interfaces().post("nimbus/cellpose-train:latest", &interface).await.unwrap();
    assert_eq!(stored["image"], "nimbus/cellpose-train:latest");
    assert_eq!(stored["access"]["users"][0]["id"], s.alice_user.id.as_str());
    let read = s.alice.worker_interfaces().get("nimbus/cellpose-train:latest").await.unwrap();
    assert_eq!(read, Some(interface));
    assert_eq!(s.alice.worker_interfaces().get("nope:1").await.unwrap(), None);
}

#[tokio::test]
async fn unknown_routes_answer_like_girder() {
    let s = seeded().await;
    let resp = raw_get(&s.mock, "no/such/thing", None).await;
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"message": "No matching route for \"GET /api/v1/no/such/thing\"", "type": "rest"})
    );
}

/// The client only speaks Girder's documented API: nothing in it knows about the mock.
#[test]
fn the_client_has_no_mock_specific_paths() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/girder");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for forbidden in ["mock_girder", "\"/mock", "mock/faults", "mock/requests"] {
            assert!(!text.contains(forbidden), "{} mentions {forbidden}", path.display());
        }
    }
}
