//! The scripted sequence of REST calls, run against each server in turn.

use bytes::Bytes;
use serde_json::{json, Value};

use super::probe::{Probe, Send};
use crate::helpers::fixture;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn q(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The scripted sequence. Jobs are created with a token from `dev_support/job_token`, which the
/// test launcher and the mock serve (not Girder: NimbusImage creates jobs server-side).
pub async fn scenario(p: &mut Probe) {
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
    let admin = p.post("POST /user (first: admin)", "user").send(Send::Form(&user("admin"))).await;
    let admin_tok = s(&admin["authToken"]["token"]);
    p.get("GET /user/me without token", "user/me").await;
    p.post("POST /user by admin", "user").token(&admin_tok).send(Send::Form(&user("alice"))).await;
    p.post("POST /user by admin", "user").token(&admin_tok).send(Send::Form(&user("bobby"))).await;
    p.post("POST /user duplicate login", "user").token(&admin_tok).send(Send::Form(&user("alice"))).await;
    p.basic("login with a wrong password", "alice", "nope").await;
    let alice = p.basic("login", "alice", "alicepass1").await;
    let tok = s(&alice["authToken"]["token"]);
    let alice_id = s(&alice["user"]["_id"]);
    let bob = s(&p.basic("login", "bobby", "bobbypass1").await["authToken"]["token"]);
    p.get("GET /user/me", "user/me").token(&tok).await;
    p.get("GET /user/me bad token", "user/me").token("x").await;
    let key = p
        .post("POST /api_key", "api_key")
        .token(&tok)
        .send(Send::Form(&[("name", "worker".into()), ("active", "true".into())]))
        .await;
    p.post("POST /api_key/token", "api_key/token").query(&q(&[("key", &s(&key["key"]))])).await;
    p.post("POST /api_key/token bad key", "api_key/token").query(&q(&[("key", &"k".repeat(40))])).await;
    p.post("POST /api_key/token no Content-Length", "api_key/token")
        .query(&q(&[("key", "k")]))
        .send(Send::Bare)
        .await;

    // folders
    let private = p
        .get("GET /folder Private", "folder")
        .token(&tok)
        .query(&q(&[("parentType", "user"), ("parentId", &alice_id), ("name", "Private")]))
        .await;
    let private_id = s(&private[0]["_id"]);
    let ds_form = [
        ("parentType", "folder".to_string()),
        ("parentId", private_id.clone()),
        ("name", "dataset1".to_string()),
        ("metadata", json!({"subtype": "contrastDataset", "selectedLargeImageId": null}).to_string()),
        ("reuseExisting", "false".to_string()),
    ];
    let ds = p.post("POST /folder dataset", "folder").token(&tok).send(Send::Form(&ds_form)).await;
    let ds_id = s(&ds["_id"]);
    p.post("POST /folder duplicate", "folder").token(&tok).send(Send::Form(&ds_form)).await;
    p.get("GET /folder/{id}", format!("folder/{ds_id}")).token(&tok).await;
    p.get("GET /folder/{id} anonymous", format!("folder/{ds_id}")).await;
    p.get("GET /folder/{id} other user", format!("folder/{ds_id}")).token(&bob).await;
    p.get("GET /folder/{id} bad id", "folder/notanid").token(&tok).await;
    let models_form = [
        ("parentType", "folder".to_string()),
        ("parentId", private_id.clone()),
        ("name", "scratch".to_string()),
    ];
    let scratch = p.post("POST /folder scratch", "folder").token(&tok).send(Send::Form(&models_form)).await;
    let scratch_id = s(&scratch["_id"]);

    // items and uploads
    let item = p
        .post("POST /item", "item")
        .token(&tok)
        .query(&q(&[("folderId", &scratch_id), ("name", "m1")]))
        .await;
    let item_id = s(&item["_id"]);
    p.post("POST /item no Content-Length", "item")
        .token(&tok)
        .query(&q(&[("folderId", &scratch_id), ("name", "m2")]))
        .send(Send::Bare)
        .await;
    p.get("GET /item?folderId", "item").token(&tok).query(&q(&[("folderId", &scratch_id)])).await;
    p.get("GET /item?folderId&name", "item")
        .token(&tok)
        .query(&q(&[("folderId", &scratch_id), ("name", "m1")]))
        .await;
    p.put("PUT /item/{id}?name", format!("item/{item_id}")).token(&tok).query(&q(&[("name", "m1b")])).await;
    p.put("PUT /item/{id} no Content-Length", format!("item/{item_id}"))
        .token(&tok)
        .query(&q(&[("name", "m1c")]))
        .send(Send::Bare)
        .await;
    let data = Bytes::from((0..3000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    let up = p
        .post("POST /file (init into item)", "file")
        .token(&tok)
        .query(&q(&[
            ("parentType", "item"),
            ("parentId", &item_id),
            ("name", "weights"),
            ("size", "3000"),
            ("mimeType", "application/octet-stream"),
        ]))
        .await;
    let up_id = s(&up["_id"]);
    p.get("GET /file/offset", "file/offset").token(&tok).query(&q(&[("uploadId", &up_id)])).await;
    p.post("POST /file/chunk wrong offset", "file/chunk")
        .token(&tok)
        .query(&q(&[("uploadId", &up_id), ("offset", "10")]))
        .send(Send::Bytes(data.clone()))
        .await;
    let file = p
        .post("POST /file/chunk final", "file/chunk")
        .token(&tok)
        .query(&q(&[("uploadId", &up_id), ("offset", "0")]))
        .send(Send::Bytes(data.clone()))
        .await;
    let file_id = s(&file["_id"]);
    p.get("GET /file/{id}", format!("file/{file_id}")).token(&tok).await;
    p.get("GET /file/{id}/download", format!("file/{file_id}/download")).token(&tok).await;
    p.get("GET /item/{id}/download", format!("item/{item_id}/download")).token(&tok).await;
    // two chunks: a non-final one must be at least Girder's 5 MiB minimum; resume from the offset
    const MIB5: usize = 5 * 1024 * 1024;
    let big = Bytes::from((0..MIB5 + 1000).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    let total = big.len().to_string();
    let init =
        [("parentType", "item"), ("parentId", item_id.as_str()), ("name", "big"), ("size", total.as_str())];
    let up = p.post("POST /file (init, 2 chunks)", "file").token(&tok).query(&q(&init)).await;
    let up_id = s(&up["_id"]);
    let small = big.slice(0..1000);
    p.post("POST /file/chunk non-final under the minimum", "file/chunk")
        .token(&tok)
        .query(&q(&[("uploadId", &up_id), ("offset", "0")]))
        .send(Send::Bytes(small))
        .await;
    p.post("POST /file/chunk first", "file/chunk")
        .token(&tok)
        .query(&q(&[("uploadId", &up_id), ("offset", "0")]))
        .send(Send::Bytes(big.slice(0..MIB5)))
        .await;
    p.get("GET /file/offset after a chunk", "file/offset")
        .token(&tok)
        .query(&q(&[("uploadId", &up_id)]))
        .await;
    let done = p
        .post("POST /file/chunk last", "file/chunk")
        .token(&tok)
        .query(&q(&[("uploadId", &up_id), ("offset", &MIB5.to_string())]))
        .send(Send::Bytes(big.slice(MIB5..)))
        .await;
    p.get("GET /file/{id}/download (2 chunks)", format!("file/{}/download", s(&done["_id"])))
        .token(&tok)
        .await;
    p.get("GET /item/{id}/files", format!("item/{item_id}/files"))
        .token(&tok)
        .query(&q(&[("limit", "0")]))
        .await;
    p.post("POST /file size=0", "file")
        .token(&tok)
        .query(&q(&[("parentType", "item"), ("parentId", &item_id), ("name", "empty"), ("size", "0")]))
        .await;
    p.get("GET /resource/lookup item", "resource/lookup")
        .token(&tok)
        .query(&q(&[("path", "/user/alice/Private/scratch/m1c")]))
        .await;
    p.get("GET /resource/lookup missing", "resource/lookup")
        .token(&tok)
        .query(&q(&[("path", "/user/alice/Private/nope")]))
        .await;
    p.delete("DELETE /item/{id}", format!("item/{item_id}")).token(&tok).await;
    p.get("GET /item/{id} deleted", format!("item/{item_id}")).token(&tok).await;
    p.delete("DELETE /folder/{id} without a local worker", format!("folder/{scratch_id}")).token(&tok).await;
    p.put("PUT /dev_support/local_worker", "dev_support/local_worker")
        .token(&admin_tok)
        .query(&q(&[("enabled", "true")]))
        .await;
    p.delete("DELETE /folder/{id} with a local worker", format!("folder/{scratch_id}")).token(&tok).await;
    p.get("GET /folder/{id} deleted", format!("folder/{scratch_id}")).token(&tok).await;

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
    p.post("POST /upenn_annotation/multiple", "upenn_annotation/multiple")
        .token(&tok)
        .send(Send::Json(docs))
        .await;
    let mut bad = ann("polygon", &["cell"], 1.0);
    bad.as_object_mut().unwrap().remove("channel");
    p.post("POST /upenn_annotation missing channel", "upenn_annotation")
        .token(&tok)
        .send(Send::Json(bad))
        .await;
    let page = p
        .get("GET /upenn_annotation page", "upenn_annotation")
        .token(&tok)
        .query(&q(&[("datasetId", &ds_id), ("limit", "2"), ("sort", "_id"), ("sortdir", "1")]))
        .await;
    p.get("GET /upenn_annotation afterId", "upenn_annotation")
        .token(&tok)
        .query(&q(&[
            ("datasetId", &ds_id),
            ("limit", "2"),
            ("sort", "_id"),
            ("sortdir", "1"),
            ("afterId", &s(&page[1]["_id"])),
        ]))
        .await;
    p.get("GET /upenn_annotation tags", "upenn_annotation")
        .token(&tok)
        .query(&q(&[("datasetId", &ds_id), ("tags", r#"["cell"]"#), ("shape", "polygon")]))
        .await;
    p.get("GET /upenn_annotation/count", "upenn_annotation/count")
        .token(&tok)
        .query(&q(&[("datasetId", &ds_id)]))
        .await;
    p.get("GET /upenn_annotation anonymous", "upenn_annotation").query(&q(&[("datasetId", &ds_id)])).await;
    p.get("GET /upenn_annotation other user", "upenn_annotation")
        .token(&bob)
        .query(&q(&[("datasetId", &ds_id)]))
        .await;
    let iface = json!({"Base Model": {"type": "select", "items": ["a"], "default": "a"}});
    p.post("POST /worker_interface", "worker_interface")
        .token(&tok)
        .query(&q(&[("image", "w:1")]))
        .send(Send::Json(iface))
        .await;
    p.get("GET /worker_interface", "worker_interface").token(&tok).query(&q(&[("image", "w:1")])).await;
    p.get("GET /worker_interface unknown", "worker_interface")
        .token(&tok)
        .query(&q(&[("image", "x:2")]))
        .await;

    // large_image: a 2-channel 16-bit OME-TIFF uploaded into the dataset folder
    let tiff = Bytes::from(std::fs::read(fixture("girder/tiles/cyx.ome.tif")).unwrap());
    let size = tiff.len().to_string();
    let up = p
        .post("POST /file (init into folder)", "file")
        .token(&tok)
        .query(&q(&[
            ("parentType", "folder"),
            ("parentId", &ds_id),
            ("name", "cyx.ome.tif"),
            ("size", &size),
            ("mimeType", "image/tiff"),
        ]))
        .await;
    let f = p
        .post("POST /file/chunk image", "file/chunk")
        .token(&tok)
        .query(&q(&[("uploadId", &s(&up["_id"])), ("offset", "0")]))
        .send(Send::Bytes(tiff))
        .await;
    let image_id = s(&f["itemId"]);
    p.get("GET /item/{id} large image", format!("item/{image_id}")).token(&tok).await;
    p.get("GET /item/{id}/tiles", format!("item/{image_id}/tiles")).token(&tok).await;
    for (label, frame) in
        [("GET /item/{id}/tiles/region pickle:5", "1"), ("GET /item/{id}/tiles/region bad frame", "99")]
    {
        p.get(label, format!("item/{image_id}/tiles/region"))
            .token(&tok)
            .query(&q(&[
                ("frame", frame),
                ("encoding", "pickle:5"),
                ("left", "3"),
                ("top", "2"),
                ("right", "11"),
                ("bottom", "7"),
            ]))
            .await;
    }

    // jobs
    let job_form = [("title", "t".to_string()), ("type", "cellpose_train".to_string())];
    p.post("POST /job with a login token", "job").token(&tok).send(Send::Form(&job_form)).await;
    let minted = p
        .post("POST /dev_support/job_token", "dev_support/job_token")
        .token(&admin_tok)
        .query(&q(&[("userId", &alice_id)]))
        .await;
    let creator = s(&minted["token"]);
    let job = p.post("POST /job", "job").token(&creator).send(Send::Form(&job_form)).await;
    let job_id = s(&job["_id"]);
    let jp = format!("job/{job_id}");
    p.put("PUT /job 0 -> 3 refused", &jp).token(&tok).query(&q(&[("status", "3")])).await;
    p.put("PUT /job bad status", &jp).token(&tok).query(&q(&[("status", "99")])).await;
    p.put("PUT /job running + progress + two-line log", &jp)
        .token(&tok)
        .query(&q(&[
            ("status", "2"),
            ("progressTotal", "1"),
            ("progressCurrent", "0.25"),
            ("progressMessage", "m"),
            ("log", "a\nb"),
        ]))
        .await;
    p.put("PUT /job log no Content-Length", &jp)
        .token(&tok)
        .query(&q(&[("log", "c")]))
        .send(Send::Bare)
        .await;
    p.put("PUT /job log", &jp).token(&tok).query(&q(&[("log", "d")])).await;
    p.get("GET /job/{id} (log entries)", &jp).token(&tok).await;
    p.put("PUT /job other user", &jp).token(&bob).query(&q(&[("log", "x")])).await;
    p.put("PUT /job 2 -> 3", &jp).token(&tok).query(&q(&[("status", "3")])).await;
    p.put("PUT /job 3 -> 2 refused", &jp).token(&tok).query(&q(&[("status", "2")])).await;
    p.put("PUT /job 3 -> 3 no-op", &jp).token(&tok).query(&q(&[("status", "3")])).await;
    let job2 = p.post("POST /job", "job").token(&creator).send(Send::Form(&job_form)).await;
    p.put("PUT /job/{id}/cancel", format!("job/{}/cancel", s(&job2["_id"]))).token(&tok).await;
    p.get("GET /job?statuses", "job").token(&tok).query(&q(&[("statuses", "[3]")])).await;
    p.get("GET /job/all admin", "job/all")
        .token(&admin_tok)
        .query(&q(&[("statuses", "[5]"), ("types", r#"["cellpose_train"]"#)]))
        .await;
    p.get("GET /job/all not admin", "job/all").token(&tok).await;
}
