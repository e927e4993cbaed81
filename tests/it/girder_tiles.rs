//! large_image through the client and the mock: uploaded TIFFs become large images with the
//! frames real large_image 1.35.6 reports (tests/fixtures/girder/tiles/expected.json, made by
//! tools/large_image_fixtures.py), regions decode to the native dtype, TIFF regions are 8-bit.

use std::collections::BTreeMap;

use bytes::Bytes;
use cellpose_train_worker::girder::{GirderError, Window};
use cellpose_train_worker::numpy::Array2;
use serde_json::{json, Value};

use super::girder_seed::{raw_get, seeded, Seeded};
use super::helpers::fixture;

fn expected() -> BTreeMap<String, Value> {
    serde_json::from_str(&std::fs::read_to_string(fixture("girder/tiles/expected.json")).unwrap()).unwrap()
}

async fn upload(s: &Seeded, name: &str) -> cellpose_train_worker::girder::Item {
    let data = std::fs::read(fixture(&format!("girder/tiles/{name}"))).unwrap();
    let (item, _) =
        s.alice.files().upload_item(&s.dataset.id, name, Bytes::from(data), "image/tiff").await.unwrap();
    s.alice.items().get(&item.id).await.unwrap()
}

#[tokio::test]
async fn tiles_metadata_matches_real_large_image_for_every_fixture() {
    let s = seeded().await;
    let token = s.alice.token().await.unwrap();
    for (name, want) in expected() {
        let item = upload(&s, &name).await;
        let source = item.large_image.as_ref().and_then(|l| l.source_name.clone());
        assert_eq!(source.as_deref(), want["sourceName"].as_str(), "{name}: tile source");
        let mut got: Value =
            raw_get(&s.mock, &format!("item/{}/tiles", item.id), token.as_ref()).await.json().await.unwrap();
        let mut want = want["tiles"].clone();
        // tile sizes and levels of untiled files depend on strip layout details the mock skips
        if want["tileWidth"] == want["sizeX"] {
            for k in ["tileWidth", "tileHeight", "levels"] {
                got[k] = Value::Null;
                want[k] = Value::Null;
            }
        }
        assert_eq!(got, want, "{name}: /tiles");
    }
}

#[tokio::test]
async fn frame_maps_regions_and_8_bit_tiffs_follow_large_image() {
    let s = seeded().await;
    let expected = expected();
    for (name, frame) in [
        ("tzcyx.ome.tif", 1),
        ("zcyx.ome.tif", 1),
        ("cyx.ome.tif", 1),
        ("pages.tif", 1),
        ("single_u8.tif", 0),
    ] {
        let item = upload(&s, name).await;
        let meta = s.alice.tiles().metadata(&item.id).await.unwrap();
        let map = meta.frame_map();
        let want = &expected[name];
        let window = Window { left: 10, top: 2, right: 14, bottom: 4 };
        let region = s.alice.tiles().region(&item.id, frame, Some(window)).await.unwrap();
        let values: Vec<Vec<f64>> =
            region.to_f32().rows().into_iter().map(|r| r.iter().map(|v| *v as f64).collect()).collect();
        let want_values: Vec<Vec<f64>> =
            serde_json::from_value(want["region_frame1_l10_t2_r14_b4"].clone()).unwrap();
        assert_eq!(values, want_values, "{name}: region values");
        assert_eq!(region.dtype().to_string(), meta.dtype.clone().unwrap(), "{name}: native dtype");
        let tiff = s.alice.tiles().region_tiff(&item.id, frame, Some(window)).await.unwrap();
        let Array2::U8(eight) = tiff else { panic!("{name}: TIFF regions are 8-bit") };
        let floor: Vec<u8> = region
            .to_f32()
            .iter()
            .map(|v| if meta.dtype.as_deref() == Some("uint16") { (*v as u32 / 256) as u8 } else { *v as u8 })
            .collect();
        assert_eq!(eight.iter().copied().collect::<Vec<_>>(), floor, "{name}: floor(v/256)");
        match name {
            "tzcyx.ome.tif" => {
                assert_eq!(map.len(), 12);
                assert_eq!(map.frame(1, 1, 2, 0), Some(11));
                assert_eq!(map.frame(0, 0, 1, 0), Some(2));
            }
            "cyx.ome.tif" => {
                assert_eq!(meta.channels.as_deref(), Some(&["DAPI".to_string(), "GFP".to_string()][..]));
                assert_eq!(map.frame(1, 0, 0, 0), Some(1));
            }
            // bare frames carry no channel index: every key maps to the first frame
            "pages.tif" => assert_eq!((map.len(), map.frame(0, 0, 0, 0)), (1, Some(0))),
            "single_u8.tif" => assert!(meta.frames.is_empty() && map.frame(0, 0, 0, 0) == Some(0)),
            _ => {}
        }
    }
}

#[tokio::test]
async fn region_pickles_are_byte_identical_to_numpy_and_quirks_are_kept() {
    let s = seeded().await;
    let item = upload(&s, "cyx_tiled.ome.tif").await;
    let token = s.alice.token().await.unwrap();
    // the recorded seed image has the same values here, so Girder's own pickle is the reference
    let resp = raw_get(
        &s.mock,
        &format!("item/{}/tiles/region?frame=1&encoding=pickle:5&left=10&top=20&right=14&bottom=22", item.id),
        token.as_ref(),
    )
    .await;
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    let body = resp.bytes().await.unwrap();
    let reference = std::fs::read(fixture("girder/region_uint16_2x4x1.pickle5")).unwrap();
    assert_eq!(body.to_vec(), reference);
    let want = expected()["cyx_tiled.ome.tif"]["region_pickle5_hex"].as_str().unwrap().to_string();
    let region = raw_get(
        &s.mock,
        &format!("item/{}/tiles/region?frame=1&encoding=pickle:5&left=10&top=2&right=14&bottom=4", item.id),
        token.as_ref(),
    )
    .await;
    let got: String = region.bytes().await.unwrap().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, want);
    let missing =
        raw_get(&s.mock, &format!("item/{}/tiles/region?frame=7&encoding=TIFF", item.id), token.as_ref())
            .await;
    assert_eq!(
        (missing.status().as_u16(), missing.headers()["content-type"].to_str().unwrap()),
        (400, "image/tiff")
    );
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"message": "Frame does not exist", "type": "rest"})
    );
    let full =
        raw_get(&s.mock, &format!("item/{}/tiles/region?frame=0&encoding=TIFF", item.id), token.as_ref())
            .await;
    assert_eq!(full.bytes().await.unwrap().len(), 122 + 48 * 40, "uncompressed single-strip TIFF");
    let scaled = raw_get(&s.mock, &format!("item/{}/tiles/region?left=0&top=0&right=40&bottom=20&width=10&height=10&frame=0&encoding=pickle:5", item.id), token.as_ref()).await;
    let scaled = cellpose_train_worker::numpy::decode_pickle(&scaled.bytes().await.unwrap()).unwrap();
    assert_eq!(scaled.dim(), (5, 10), "width/height keep the aspect ratio");
    let err = s.alice.tiles().region(&item.id, 9, None).await.unwrap_err();
    assert_eq!(err.girder_message(), Some("Frame does not exist"));
}

#[tokio::test]
async fn the_dataset_image_is_the_selected_one_else_the_first_large_image() {
    let s = seeded().await;
    let err = s.alice.tiles().dataset_image(&s.dataset.id).await.unwrap_err();
    assert!(matches!(err, GirderError::NoLargeImage { .. }), "{err:?}");
    s.alice
        .files()
        .upload_item(&s.dataset.id, "notes.txt", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap();
    let first = upload(&s, "zcyx.ome.tif").await;
    let second = upload(&s, "cyx.ome.tif").await;
    assert_eq!(
        s.alice.tiles().dataset_image(&s.dataset.id).await.unwrap().id,
        second.id,
        "cyx sorts first by name"
    );
    let meta = json!({"subtype": "contrastDataset", "selectedLargeImageId": first.id});
    let selected = s
        .alice
        .folders()
        .create(cellpose_train_worker::girder::ParentType::Folder, &s.private.id, "d2", Some(&meta), false)
        .await
        .unwrap();
    let err = s.alice.tiles().dataset_image(&selected.id).await.unwrap_err();
    assert!(err.to_string().contains("selectedLargeImageId"), "{err}");
    s.alice.folders().set_metadata(&s.dataset.id, &json!({"selectedLargeImageId": first.id})).await.unwrap();
    assert_eq!(
        s.alice.tiles().dataset_image(&s.dataset.id).await.unwrap().id,
        first.id,
        "the selected image wins"
    );
}

#[tokio::test]
async fn post_tiles_makes_a_large_image_once() {
    let s = seeded().await;
    let data = std::fs::read(fixture("girder/tiles/cyx.ome.tif")).unwrap();
    // no .tif extension: the upload is not auto-set
    let (item, file) = s
        .alice
        .files()
        .upload_item(&s.dataset.id, "image.data", Bytes::from(data), "image/tiff")
        .await
        .unwrap();
    assert!(s.alice.items().get(&item.id).await.unwrap().large_image.is_none());
    let token = s.alice.token().await.unwrap().unwrap();
    let post = || {
        reqwest::Client::new()
            .post(format!("{}/item/{}/tiles?fileId={}", s.mock.api_url, item.id, file.id))
            .header("Girder-Token", token.expose())
            .header("Content-Length", "0") // Girder answers a body-less POST without it with 411
            .send()
    };
    assert_eq!(post().await.unwrap().text().await.unwrap(), "null");
    let li = s.alice.items().get(&item.id).await.unwrap().large_image.unwrap();
    assert_eq!((li.file_id.as_deref(), li.source_name.as_deref()), (Some(file.id.as_str()), Some("ometiff")));
    assert_eq!(s.alice.tiles().metadata(&item.id).await.unwrap().frames.len(), 2);
    let again = post().await.unwrap();
    assert_eq!(again.status(), 400);
    assert_eq!(again.json::<Value>().await.unwrap()["message"], "Item already has largeImage set.");
}
