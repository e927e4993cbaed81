//! Every bad input of the training job (issue 6), each failing with a message that names the
//! problem (field, annotation id, frame, region, token) while nothing is uploaded or deleted: the
//! user's models folder stays exactly as it was. Inputs the reference tolerates (coordinates
//! outside the frame, self-intersecting polygons, secondary = primary) warn or clip and train.

use std::time::Duration;

use cellpose_train_worker::demo::seed::{interface_values, CELL_TAG};
use cellpose_train_worker::girder::{ParentType, Secret};
use cellpose_train_worker::job::{JobError, JobEvent};
use serde_json::{json, Value};

use super::girder_seed::requests;
use super::job::{fixture, json_lines, oneshot, with, BASE, TINY};

#[tokio::test]
async fn bad_parameters_and_datasets_fail_before_any_download_with_the_field_named() {
    let f = fixture(64, 4, &TINY).await;
    let ok = interface_values(BASE, "my-model", 1);
    let s = |v: Value| Some(v);
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "training tag missing",
            with(&ok, "Training Tag", None),
            vec!["Training Tag", "no training tag selected"],
        ),
        (
            "training tag empty",
            with(&ok, "Training Tag", s(json!([]))),
            vec!["Training Tag", "no training tag"],
        ),
        (
            "primary channel missing",
            with(&ok, "Primary Channel", None),
            vec!["Primary Channel", "no primary channel"],
        ),
        (
            "primary channel -1",
            with(&ok, "Primary Channel", s(json!(-1))),
            vec!["Primary Channel", "no primary channel"],
        ),
        (
            "primary channel text",
            with(&ok, "Primary Channel", s(json!("dapi"))),
            vec!["Primary Channel", "\"dapi\""],
        ),
        (
            "primary channel not in the dataset",
            with(&ok, "Primary Channel", s(json!(7))),
            vec!["Primary Channel 7 is not in the dataset (its channels are 0, 1)"],
        ),
        (
            "secondary channel not in the dataset",
            with(&ok, "Secondary Channel", s(json!(4))),
            vec!["Secondary Channel 4 is not in the dataset"],
        ),
        ("name empty", with(&ok, "Output Model Name", s(json!(""))), vec!["Output Model Name", "is empty"]),
        ("name missing", with(&ok, "Output Model Name", None), vec!["Output Model Name", "is empty"]),
        (
            "name with /",
            with(&ok, "Output Model Name", s(json!("a/b"))),
            vec!["Output Model Name", "`a/b`", "slash"],
        ),
        (
            "name with \\",
            with(&ok, "Output Model Name", s(json!("a\\b"))),
            vec!["Output Model Name", "slash"],
        ),
        ("name with ..", with(&ok, "Output Model Name", s(json!("..x"))), vec!["Output Model Name", "`..`"]),
        (
            "name with control",
            with(&ok, "Output Model Name", s(json!("a\tb"))),
            vec!["Output Model Name", "control"],
        ),
        (
            "name cyto3",
            with(&ok, "Output Model Name", s(json!("cyto3"))),
            vec!["Output Model Name", "`cyto3`", "built-in"],
        ),
        (
            "name nuclei",
            with(&ok, "Output Model Name", s(json!("nuclei"))),
            vec!["Output Model Name", "built-in"],
        ),
        (
            "unknown base",
            with(&ok, "Base Model", s(json!("no-such"))),
            vec!["Base Model", "unknown model `no-such`"],
        ),
        (
            "learning rate too high",
            with(&ok, "Learning Rate", s(json!(0.9))),
            vec!["Learning Rate", "0.9 is outside the allowed range 0.0001..0.5"],
        ),
        (
            "learning rate text",
            with(&ok, "Learning Rate", s(json!("fast"))),
            vec!["Learning Rate", "is not a number"],
        ),
        ("learning rate NaN", with(&ok, "Learning Rate", s(json!("NaN"))), vec!["Learning Rate", "finite"]),
        (
            "epochs too many",
            with(&ok, "Epochs", s(json!(5000))),
            vec!["Epochs", "5000 is outside the allowed range 1..2000"],
        ),
        ("epochs fractional", with(&ok, "Epochs", s(json!(2.5))), vec!["Epochs", "whole number"]),
        (
            "weight decay negative",
            with(&ok, "Weight Decay", s(json!(-0.001))),
            vec!["Weight Decay", "outside"],
        ),
        (
            "weight decay bool",
            with(&ok, "Weight Decay", s(json!(true))),
            vec!["Weight Decay", "is not a number"],
        ),
    ];
    for (case, values, needles) in cases {
        let err = f.refused(case, f.run(values), &needles, true).await;
        assert!(matches!(err, JobError::Params(_) | JobError::Channel(_)), "{case}: {err:?}");
    }
    // a dataset folder with no large image in it
    let private = f.world.user.folders().user_folder(&f.world.user_id, "Private").await.unwrap();
    let empty = f
        .world
        .user
        .folders()
        .create(ParentType::Folder, &private.id, "no image", None, false)
        .await
        .unwrap();
    let run = f.run_as(&f.world.user, &empty.id, ok.clone(), f.settings());
    f.refused("no large image", run, &["no large image", &empty.id], true).await;
    // a wrong token: said so, with what to do
    let stranger = f.world.user.with_token(Secret::new("not-a-token-at-all"));
    let run = f.run_as(&stranger, &f.world.dataset_id, ok, f.settings());
    let err = f.refused("wrong token", run, &["token", "expired or wrong", "Log in"], true).await;
    assert!(matches!(err, JobError::Token(_)), "{err:?}");
}

#[tokio::test]
async fn bad_annotations_missing_frames_and_huge_regions_name_the_culprit() {
    let f = fixture(96, 8, &TINY).await;
    let ok = interface_values(BASE, "my-model", 1);
    let tagged = |tag: &str| with(&ok, "Training Tag", Some(json!([CELL_TAG, tag])));
    let ids = f
        .annotate(&[
            f.doc("polygon", "two-points", 0, &[(1.0, 1.0), (5.0, 5.0)]),
            f.doc("rectangle", "three-corners", 0, &[(1.0, 1.0), (9.0, 1.0), (9.0, 9.0)]),
            f.doc("rectangle", "open-ring", 0, &[(1.0, 1.0), (9.0, 1.0), (9.0, 9.0), (1.0, 9.0), (2.0, 1.0)]),
            f.doc("polygon", "far-away", 0, &[(1.0, 1.0), (3e9, 1.0), (9.0, 9.0)]),
            f.doc("polygon", "elsewhere", 3, &[(10.0, 10.0), (30.0, 10.0), (20.0, 30.0)]),
            // across the corner where the demo's training quadrants meet
            f.doc(
                "rectangle",
                "overlapping-val",
                0,
                &[(38.0, 38.0), (58.0, 38.0), (58.0, 58.0), (38.0, 58.0)],
            ),
        ])
        .await;
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("polygon of 2 points", tagged("two-points"), vec![&ids[0], "at least 3 points", "this one has 2"]),
        (
            "rectangle of 3 points",
            tagged("three-corners"),
            vec![&ids[1], "4 corner points", "this one has 3"],
        ),
        (
            "rectangle of 5 points, not closed",
            tagged("open-ring"),
            vec![&ids[2], "must repeat its first point"],
        ),
        ("coordinate beyond any frame", tagged("far-away"), vec![&ids[3], "`x` = 3000000000"]),
        (
            "no annotation has the tag",
            with(&ok, "Training Tag", Some(json!(["nobody-uses-this"]))),
            vec!["No training annotations found", "nobody-uses-this"],
        ),
        (
            "annotation on a frame the image does not have",
            with(&tagged("elsewhere"), "Training Region", None),
            vec!["no frame for channel 0 at Time 0, Z 0, XY 3"],
        ),
        (
            "validation region overlapping a training region",
            with(&ok, "Validation Region", Some(json!(["overlapping-val"]))),
            vec![&ids[5], "overlaps training region", "not trained on"],
        ),
    ];
    for (case, values, needles) in cases {
        f.refused(case, f.run(values), &needles, false).await;
        let log = requests(&f.mock).await;
        assert!(
            !log.iter().any(|(_, p, _)| p.ends_with("/tiles/region")),
            "{case}: fetched pixels before failing"
        );
    }
    // regions larger than the pixel budget (the demo's are 48x48)
    let mut small = f.settings();
    small.training.max_region_pixels = 1000;
    let run = f.run_as(&f.world.user, &f.world.dataset_id, ok.clone(), small);
    f.refused(
        "region over the pixel budget",
        run,
        &["covers 48x48 = 2304 pixels", "1000", "smaller regions"],
        false,
    )
    .await;
}

#[tokio::test]
async fn a_region_too_small_to_train_on_is_refused_in_the_jobs_own_words() {
    // issue 26: a 1x1 region ended in cellpose's advice to lower --min-train-masks, a CLI flag
    // a NimbusImage user cannot set
    let f = fixture(96, 8, &TINY).await;
    let ok = interface_values(BASE, "my-model", 1);
    let ids = f
        .annotate(&[
            f.doc("rectangle", "one-pixel", 0, &[(20.0, 20.0), (21.0, 20.0), (21.0, 21.0), (20.0, 21.0)]),
            f.doc("rectangle", "thin-val", 0, &[(70.0, 70.0), (90.0, 70.0), (90.0, 72.0), (70.0, 72.0)]),
        ])
        .await;
    for (case, values, id, size) in [
        ("a 1x1 training region", with(&ok, "Training Region", Some(json!(["one-pixel"]))), &ids[0], "1x1"),
        (
            "a 20x2 validation region",
            with(&ok, "Validation Region", Some(json!(["thin-val"]))),
            &ids[1],
            "20x2",
        ),
    ] {
        let needles = [id.as_str(), &format!("covers only {size} pixels"), "16x16", "Training Region"];
        let err = f.refused(case, f.run(values), &needles, false).await;
        let text = format!("{err} | {}", err.info());
        assert!(!text.contains("--min-train-masks") && !text.contains("min_train_masks"), "{case}: {text}");
        // refused while planning the cuts: no pixel was fetched
        let log = requests(&f.mock).await;
        assert!(!log.iter().any(|(_, p, _)| p.ends_with("/tiles/region")), "{case}: fetched pixels");
    }
}

#[tokio::test]
async fn tolerated_inputs_warn_or_clip_and_the_job_still_trains() {
    let f = fixture(96, 8, &TINY).await;
    f.annotate(&[
        // partly outside the frame: clipped
        f.doc("polygon", CELL_TAG, 0, &[(-10.0, -10.0), (20.0, -5.0), (15.0, 25.0)]),
        // self-intersecting (a bow tie): rasterized as polygon2mask would
        f.doc("polygon", CELL_TAG, 0, &[(30.0, 30.0), (44.0, 44.0), (44.0, 30.0), (30.0, 44.0)]),
        // a rectangle as a closed ring of 5 points
        f.doc("rectangle", CELL_TAG, 0, &[(60.0, 5.0), (70.0, 5.0), (70.0, 15.0), (60.0, 15.0), (60.0, 5.0)]),
        // malformed, but with a tag the job does not use: ignored
        f.doc("polygon", "sketch", 0, &[(1.0, 1.0), (2.0, 2.0)]),
    ])
    .await;
    let values = with(&interface_values(BASE, "tolerant", 1), "Secondary Channel", Some(json!(0)));
    let (result, events) = f.run(values).await;
    let outcome = result.unwrap_or_else(|e| panic!("{e} | {}", e.info()));
    let warnings: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Warning { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    let same = "Secondary channel is the same as the primary channel; ignoring it (training on the primary channel only).";
    assert_eq!(warnings.iter().filter(|w| **w == same).count(), 1, "{warnings:?}");
    assert!(!warnings.iter().any(|w| w.contains("No secondary")), "one warning for one cause: {warnings:?}");
    assert!(outcome.n_train >= 1);
    f.model("tolerant").await;
}

#[tokio::test]
async fn an_expired_token_is_reported_as_one_error_line_and_a_failing_exit() {
    let f = fixture(64, 4, &TINY).await;
    // a token that lives ~0.1 s (tokenDuration is in days)
    let key = f.world.user.users().create_api_key("short", Some(1e-6)).await.unwrap().key;
    let resp: Value = reqwest::Client::new()
        .post(format!("{}/api_key/token", f.mock.api_url))
        .query(&[("key", key.expose())])
        .header("Content-Length", "0") // Girder answers a body-less POST without it with 411
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = resp["authToken"]["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = f.folder("models").await;

    let params = json!({"workerInterface": interface_values(BASE, "never", 1)});
    let out = oneshot(&f, &token, "compute", params, &[]).await;
    assert!(!out.status.success(), "an expired token must fail the run");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "only the error line: {lines:?}");
    let msg = lines[0]["error"].as_str().expect("an error line");
    assert!(msg.contains("token") && msg.contains("expired or wrong"), "{msg}");
    assert!(lines[0]["info"].as_str().unwrap().contains("Log in to NimbusImage again"));
    assert_eq!(f.folder("models").await, before);
}

#[test]
fn a_compute_that_cannot_start_still_prints_one_error_line() {
    let dir = super::helpers::tempdir();
    let cfg = dir.path().join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    let run = |parameters: &str, env: &[(&str, &str)]| {
        let mut cmd = super::helpers::bin();
        cmd.args(["--apiUrl", "http://127.0.0.1:9/api/v1", "--token", "t", "--request", "compute"])
            .args(["--datasetId", "d", "--parameters", parameters])
            .arg("--config")
            .arg(&cfg)
            .envs(env.iter().copied());
        cmd.output().unwrap()
    };
    for (case, out, needle) in [
        ("parameters not JSON", run("{not json", &[]), "--parameters is not valid JSON"),
        (
            "bad settings",
            run("{}", &[("CPW_TRAINING__BSIZE", "30")]),
            "bsize must be a positive multiple of 16",
        ),
    ] {
        assert!(!out.status.success(), "{case}: exit status");
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "{case}: {lines:?}");
        let msg = lines[0]["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{case}: {msg}");
    }
}
