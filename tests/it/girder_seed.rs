//! Set-up shared by the Girder tests: an in-process mock seeded through the REST API the way a
//! real Girder is (first user becomes admin, logins, an API key, a NimbusImage dataset folder).
#![allow(dead_code)]

use std::time::Duration;

use cellpose_train_worker::girder::{
    Auth, Folder, GirderClient, GirderConfig, NewUser, ParentType, RetryPolicy, Secret, User,
};
use cellpose_train_worker::mock_girder::{spawn_mock, MockConfig, MockHandle};
use serde_json::{json, Value};

/// Fast retries so fault tests finish quickly.
pub fn config(mock: &MockHandle) -> GirderConfig {
    let mut c = GirderConfig::new(&mock.api_url);
    c.timeout = Duration::from_secs(5);
    c.retry = RetryPolicy {
        max_retries: 4,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(10),
    };
    c
}

pub struct Seeded {
    pub mock: MockHandle,
    pub admin: GirderClient,
    pub alice: GirderClient,
    pub alice_user: User,
    pub alice_key: Secret,
    pub bob: GirderClient,
    pub anonymous: GirderClient,
    pub private: Folder,
    pub dataset: Folder,
}

/// `client`'s user with a token that may `POST /job` (a login token may not, as in Girder).
pub async fn creator(s: &Seeded, client: &GirderClient) -> GirderClient {
    let me = client.users().me().await.unwrap();
    client.with_token(s.admin.jobs().creator_token(&me.id).await.unwrap())
}

pub fn new_user(login: &str) -> NewUser {
    NewUser {
        login: login.into(),
        email: format!("{login}@example.com"),
        first_name: login.into(),
        last_name: "Tester".into(),
        password: Secret::new(format!("{login}pass1")),
    }
}

pub async fn seeded() -> Seeded {
    seeded_with(MockConfig::default()).await
}

pub async fn seeded_with(mock_config: MockConfig) -> Seeded {
    let mock = spawn_mock(mock_config).await.expect("mock starts");
    let cfg = config(&mock);
    let anonymous = GirderClient::new(cfg.clone(), Auth::Anonymous).unwrap();
    let (admin_user, admin_token) = anonymous.users().create(&new_user("admin")).await.unwrap();
    assert!(admin_user.admin, "the first user becomes admin");
    let admin = anonymous.with_token(admin_token.expect("anonymous POST /user logs the user in"));
    for login in ["alice", "bobby"] {
        let (_, token) = admin.users().create(&new_user(login)).await.unwrap();
        assert!(token.is_none(), "a logged-in admin creating a user gets no token");
    }
    let (alice, alice_user) =
        GirderClient::login(cfg.clone(), "alice", &Secret::new("alicepass1")).await.unwrap();
    let (bob, _) = GirderClient::login(cfg.clone(), "bobby", &Secret::new("bobbypass1")).await.unwrap();
    let alice_key = alice.users().create_api_key("worker", None).await.unwrap().key;
    let private = alice.folders().user_folder(&alice_user.id, "Private").await.unwrap();
    let meta = json!({"subtype": "contrastDataset", "selectedLargeImageId": null});
    let dataset = alice
        .folders()
        .create(ParentType::Folder, &private.id, "dataset1", Some(&meta), false)
        .await
        .unwrap();
    Seeded { mock, admin, alice, alice_user, alice_key, bob, anonymous, private, dataset }
}

/// `POST /mock/faults`.
pub async fn fault(mock: &MockHandle, spec: Value) {
    fault_at(&mock.base_url, spec).await
}

/// `POST /mock/faults` to the server at `base_url` (`http://host:port`): the mock, or the real
/// Girder the tests start (its launcher serves the same route).
pub async fn fault_at(base_url: &str, spec: Value) {
    let resp =
        reqwest::Client::new().post(format!("{base_url}/mock/faults")).json(&spec).send().await.unwrap();
    assert!(resp.status().is_success(), "fault {spec} refused: {}", resp.text().await.unwrap_or_default());
}

/// `GET /mock/requests`: `(method, path, status)` of each API request.
pub async fn requests(mock: &MockHandle) -> Vec<(String, String, Option<u16>)> {
    let log: Vec<Value> =
        reqwest::get(format!("{}/mock/requests", mock.base_url)).await.unwrap().json().await.unwrap();
    log.iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or_default().to_string(),
                r["path"].as_str().unwrap_or_default().to_string(),
                r["status"].as_u64().map(|s| s as u16),
            )
        })
        .collect()
}

/// `DELETE /mock/requests`.
pub async fn clear_requests(mock: &MockHandle) {
    reqwest::Client::new().delete(format!("{}/mock/requests", mock.base_url)).send().await.unwrap();
}

/// Requests in the log matching method and a path suffix.
pub fn count(log: &[(String, String, Option<u16>)], method: &str, path_suffix: &str) -> usize {
    log.iter().filter(|(m, p, _)| m == method && p.ends_with(path_suffix)).count()
}

/// A raw request with a token, for checks the typed client hides (headers, exact bodies).
pub async fn raw_get(mock: &MockHandle, path_and_query: &str, token: Option<&Secret>) -> reqwest::Response {
    let mut rb = reqwest::Client::new().get(format!("{}/api/v1/{path_and_query}", mock.base_url));
    if let Some(t) = token {
        rb = rb.header("Girder-Token", t.expose());
    }
    rb.send().await.unwrap()
}
