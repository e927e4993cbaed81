//! Issue 26, problem 4: ids that go into request paths are checked before anything is sent. A
//! dataset id of `../user/me` made the worker send `GET /api/v1/user/me` with the user's token,
//! `ID?x=1` added a query string; both are refused with a message naming the flag, and the
//! client refuses every id that is not a Girder ObjectId without making the request.

use cellpose_train_worker::demo::seed::interface_values;
use serde_json::{json, Value};

use super::girder_seed::{clear_requests, requests, seeded};
use super::helpers::{bin, tempdir};
use super::job::json_lines;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_id_that_is_a_path_or_has_a_query_is_refused_naming_the_flag_and_nothing_is_sent() {
    let s = seeded().await;
    let token = s.alice.token().await.unwrap().unwrap();
    let dir = tempdir();
    let cfg = dir.path().join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    // valid fields: without the check, the job would go on to read the dataset
    let params = json!({"workerInterface": interface_values("cyto3", "m", 100)}).to_string();
    for bad in ["../user/me".to_string(), format!("{}?x=1", s.dataset.id), "../../system/version".into()] {
        clear_requests(&s.mock).await;
        let out = bin()
            .args(["--apiUrl", &s.mock.api_url, "--token", token.expose(), "--request", "compute"])
            .args(["--datasetId", &bad, "--parameters", &params])
            .arg("--config")
            .arg(&cfg)
            .env("CPW_TRAINING__DEVICE", "cpu")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}: exit status");
        let sent = requests(&s.mock).await;
        assert!(sent.is_empty(), "{bad}: nothing may reach Girder, sent {sent:?}");
        let lines = json_lines(&out);
        let [line] = lines.as_slice() else { panic!("{bad}: want one error line, got {lines:?}") };
        let message = line["error"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("--datasetId: dataset id `") && message.contains(&bad),
            "{bad}: the flag and the value are named: {message}"
        );
        assert!(message.contains("24 hexadecimal digits"), "{bad}: what an id looks like: {message}");
    }
}

#[tokio::test]
async fn the_client_refuses_ids_that_are_not_object_ids_before_sending_anything() {
    let s = seeded().await;
    let c = &s.alice;
    let good = s.dataset.id.clone();
    for bad in ["../user/me", "..", &format!("{good}?x=1"), &format!("{good}/download"), "", "%2e%2e"] {
        clear_requests(&s.mock).await;
        let meta = Value::Null;
        let update = Default::default();
        let errors = [
            ("items().get", c.items().get(bad).await.err()),
            ("items().rename", c.items().rename(bad, "x").await.err()),
            ("items().delete", c.items().delete(bad).await.err()),
            ("items().files", c.items().files(bad).await.err()),
            ("items().download", c.items().download(bad).await.err()),
            ("folders().get", c.folders().get(bad).await.err()),
            ("folders().set_metadata", c.folders().set_metadata(bad, &meta).await.err()),
            ("folders().delete", c.folders().delete(bad).await.err()),
            ("files().get", c.files().get(bad).await.err()),
            ("files().download", c.files().download(bad).await.err()),
            (
                "files().download_to_path",
                c.files().download_to_path(bad, &tempdir().path().join("x")).await.err(),
            ),
            ("jobs().get", c.jobs().get(bad).await.err()),
            ("jobs().update", c.jobs().update(bad, &update).await.err()),
            ("jobs().cancel", c.jobs().cancel(bad).await.err()),
            ("tiles().metadata", c.tiles().metadata(bad).await.err()),
            ("tiles().region", c.tiles().region(bad, 0, None).await.err()),
            ("tiles().dataset_image", c.tiles().dataset_image(bad).await.err()),
        ];
        for (call, err) in errors {
            let err = err.unwrap_or_else(|| panic!("{call}({bad:?}) succeeded"));
            assert!(err.to_string().contains("is not a Girder id"), "{call}({bad:?}): {err}");
        }
        let sent = requests(&s.mock).await;
        assert!(sent.is_empty(), "{bad:?}: requests went out: {sent:?}");
    }
    // a good id still works, upper case included (Girder's ids are lower case)
    assert_eq!(c.folders().get(&good.to_uppercase()).await.unwrap().id, good);
}
