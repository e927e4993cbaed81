//! NimbusImage annotations: cursor paging, filters, validation and access, through the client
//! and, for headers and key order, raw HTTP.

use cellpose_train_worker::girder::{AnnotationQuery, GirderError};
use serde_json::{json, Value};

use super::girder_seed::{count, raw_get, requests, seeded};

fn annotation(dataset: &str, shape: &str, tags: &[&str], x: i64) -> Value {
    json!({
        "name": format!("a{x}"), "tags": tags, "shape": shape, "channel": 0,
        "location": {"XY": 0, "Z": 0, "Time": 0}, "datasetId": dataset,
        "coordinates": [{"x": x, "y": 1}, {"x": x + 5, "y": 1}, {"x": x, "y": 6}],
    })
}

#[tokio::test]
async fn all_annotations_are_read_with_cursor_paging_and_filters() {
    let s = seeded().await;
    let d = s.dataset.id.as_str();
    let docs: Vec<Value> = (0..7)
        .map(|i| {
            let tags: &[&str] = if i % 2 == 0 { &["cell", "nucleus"] } else { &["cell"] };
            annotation(d, if i == 6 { "point" } else { "polygon" }, tags, i)
        })
        .collect();
    let created = s.alice.annotations().create_many(&docs).await.unwrap();
    assert_eq!(created.len(), 7);
    let query = AnnotationQuery { page_size: 3, ..Default::default() };
    let all = s.alice.annotations().list(d, &query).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|a| a["_id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = created.iter().map(|a| a["_id"].as_str().unwrap()).collect();
    assert_eq!(ids, expected, "every annotation once, in _id order");
    let log = requests(&s.mock).await;
    assert_eq!(count(&log, "GET", "/upenn_annotation"), 3, "pages of 3, 3 and a short 1");
    let polygons = AnnotationQuery {
        shape: Some("polygon".into()),
        tags: vec!["nucleus".into(), "cell".into()],
        page_size: 2,
    };
    let found = s.alice.annotations().list(d, &polygons).await.unwrap();
    let names: Vec<&str> = found.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a0", "a2", "a4"], "shape and all-tags filters");
    assert_eq!(s.alice.annotations().count(d, Some("polygon")).await.unwrap(), 6);
}

#[tokio::test]
async fn the_list_streams_stored_key_order_with_total_count_and_honours_offset_and_after_id() {
    let s = seeded().await;
    let d = s.dataset.id.as_str();
    let token = s.alice.token().await.unwrap();
    // sent as text so the key order is ours (a serde_json::Value would sort the keys)
    let doc = |n: u32| {
        format!(
            r#"{{"name":"a{n}","tags":["a"],"shape":"polygon","channel":0,"location":{{"XY":0,"Z":0,"Time":0}},"datasetId":"{d}","coordinates":[{{"x":{n},"y":1}}]}}"#
        )
    };
    let body = format!("[{},{}]", doc(1), doc(2));
    let resp = reqwest::Client::new()
        .post(format!("{}/upenn_annotation/multiple", s.mock.api_url))
        .header("Girder-Token", token.as_ref().unwrap().expose())
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let created: Vec<Value> = resp.json().await.unwrap();
    let resp = raw_get(
        &s.mock,
        &format!("upenn_annotation?datasetId={d}&shape=polygon&limit=1&offset=1"),
        token.as_ref(),
    )
    .await;
    assert_eq!(resp.headers()["girder-total-count"], "2");
    let text = resp.text().await.unwrap();
    let id = created[1]["_id"].as_str().unwrap();
    assert_eq!(
        text,
        format!("[{},\"_id\":\"{id}\"}}]", doc(2).trim_end_matches('}')),
        "stored key order, _id last"
    );
    let first = created[0]["_id"].as_str().unwrap();
    let resp = raw_get(
        &s.mock,
        &format!("upenn_annotation?datasetId={d}&afterId={first}&offset=5&sort=_id"),
        token.as_ref(),
    )
    .await;
    let after: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(after.len(), 1, "afterId ignores offset");
    assert_eq!(after[0]["_id"], created[1]["_id"]);
}

#[tokio::test]
async fn invalid_annotations_are_400_and_other_users_are_kept_out() {
    let s = seeded().await;
    let d = s.dataset.id.as_str();
    let mut bad = annotation(d, "polygon", &["a"], 1);
    bad.as_object_mut().unwrap().remove("channel");
    let err = s.alice.annotations().create_many(&[bad]).await.unwrap_err();
    assert!(
        matches!(&err, GirderError::Http { status: 400, message, kind, .. } if message == "data must contain ['channel'] properties" && kind.as_deref() == Some("validation")),
        "{err:?}"
    );
    let err = s.anonymous.annotations().list(d, &AnnotationQuery::default()).await.unwrap_err();
    assert!(
        matches!(&err, GirderError::Unauthorized { message, .. } if message.ends_with("(user None).")),
        "{err:?}"
    );
    let err = s.bob.annotations().list(d, &AnnotationQuery::default()).await.unwrap_err();
    assert!(matches!(err, GirderError::Forbidden { .. }), "{err:?}");
    // a folder that is not a NimbusImage dataset cannot hold annotations
    let err =
        s.alice.annotations().create_many(&[annotation(&s.private.id, "polygon", &[], 1)]).await.unwrap_err();
    assert_eq!(err.girder_message(), Some("Annotation dataset ID is invalid"));
}
