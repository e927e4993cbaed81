//! Hostile input through NimbusImage's one-shot mode against the mock Girder.

use bytes::Bytes;
use cellpose_train_worker::demo::seed::interface_values;
use cellpose_train_worker::job::store;
use serde_json::{json, Value};

use super::{case, check, crafted_model, Ends};
use crate::job::{fixture, with, BASE, TINY};

/// The user's Girder models as "item id name" lines.
async fn model_items(f: &crate::job::Fixture) -> Vec<String> {
    let items = store::list_user_models(&f.world.user, &f.world.user_id).await.unwrap();
    items.into_iter().map(|i| format!("{} {}", i.id, i.name)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_oneshot_inputs_fail_with_an_error_line_and_touch_no_model() {
    let f = fixture(64, 4, &TINY).await;
    let user = &f.world.user;
    let crafted = crafted_model(&[1 << 40], &[0], 1, &[0; 4], false);
    store::upload_model(user, &f.world.user_id, "crafted", Bytes::from(crafted), "test").await.unwrap();
    let before = model_items(&f).await;
    let ok = interface_values(BASE, "my-model", 1);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = f.models_dir.path().join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    let token = f.world.user_token.expose().to_string();
    let compute = |name: &str, api: &str, params: Value, needles: &[&str]| {
        let mut c = case(
            name,
            &[
                &"--apiUrl",
                &api.to_string(),
                &"--token",
                &token,
                &"--request",
                &"compute",
                &"--datasetId",
                &f.world.dataset_id,
                &"--parameters",
                &params.to_string(),
                &"--config",
                &cfg,
            ],
            Ends::Code(1),
            needles,
        );
        c.env = vec![
            ("CPW_TRAINING__DEVICE".into(), "cpu".into()),
            ("CPW_TRAINING__BSIZE".into(), "32".into()),
            ("CPW_TRAINING__MIN_EPOCHS".into(), "1".into()),
            ("CPW_GIRDER__MAX_RETRIES".into(), "0".into()),
        ];
        c.error_line = true;
        c
    };
    let wi = |v: Value| json!({ "workerInterface": v });
    let api = f.mock.api_url.clone();
    let root = api.trim_end_matches("/api/v1").to_string();
    let mut cases = vec![
        compute(
            "compute with the crafted base model",
            &api,
            wi(with(&ok, "Base Model", Some(json!("crafted")))),
            &["crafted", "4398046511104 bytes"],
        ),
        compute(
            "compute, parameters a string",
            &api,
            json!("{\"workerInterface\": {}}"),
            &["--parameters", "not a string"],
        ),
        compute(
            "compute, workerInterface a string",
            &api,
            json!({"workerInterface": "x"}),
            &["workerInterface", "a string"],
        ),
        compute(
            "compute, Output Model Name .",
            &api,
            wi(with(&ok, "Output Model Name", Some(json!(".")))),
            &["Output Model Name", "folder"],
        ),
        compute(
            "compute, Output Model Name 201 x é",
            &api,
            wi(with(&ok, "Output Model Name", Some(json!("é".repeat(201))))),
            &["Output Model Name", "201 characters"],
        ),
        compute(
            "compute, a tag nobody used",
            &api,
            wi(with(&ok, "Training Tag", Some(json!(["nobody"])))),
            &["nobody", "polygon and rectangle annotations; their tags: "],
        ),
        compute(
            "compute, Girder port closed",
            &format!("http://127.0.0.1:{closed_port}/api/v1"),
            wi(ok.clone()),
            &[&*format!("127.0.0.1:{closed_port}"), "check the host and port"],
        ),
        compute("compute, API URL without /api/v1", &format!("{root}/girder"), wi(ok.clone()), &["/api/v1"]),
    ];
    let mut piped = compute("compute | head -1 (closed pipe)", &api, wi(ok.clone()), &[]);
    piped.ends = Ends::Sigpipe;
    piped.closed_stdout = true;
    piped.error_line = false;
    cases.push(piped);
    let work = f.models_dir.path().to_path_buf();
    let (tried, clear) = tokio::task::spawn_blocking(move || check(&cases, &[&work])).await.unwrap();
    assert_eq!(model_items(&f).await, before, "the user's models changed");
    eprintln!("hostile one-shot inputs: {tried} tried, {clear} clear errors, 0 crashes");
}
