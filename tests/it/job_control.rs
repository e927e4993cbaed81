//! One control value reaches every stage (issue 13): a cancel or a shutdown while the intake,
//! the fetch or the training runs ends the job within one request or one step, nothing is
//! uploaded, and the two reasons end it differently (canceled vs. handed back). The slow
//! requests are the mock's 30-second delays: without the race the job would sit them out.

use std::time::{Duration, Instant};

use cellpose_train_worker::control::{Control, StopReason};
use cellpose_train_worker::demo::seed::interface_values;
use cellpose_train_worker::girder::Secret;
use cellpose_train_worker::job::events::Checkpoint;
use cellpose_train_worker::job::{run_job, Events, JobContext, JobError, JobEvent, JobRequest, Request};
use cellpose_train_worker::tool::Tool;
use serde_json::json;

use super::girder_seed::fault;
use super::job::{fixture, Fixture, BASE, TINY};

/// Runs a job on `f` and stops it with `reason` once `stop_when` sees an event (or, with no
/// predicate, 300 ms after the start). Returns the result, the seconds from the stop to the
/// end, the events and the checkpoints.
async fn run_and_stop(
    f: &Fixture,
    epochs: usize,
    stop_when: Option<fn(&JobEvent) -> bool>,
    reason: StopReason,
) -> (Result<(), JobError>, f64, Vec<JobEvent>, Vec<Checkpoint>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (checkpoint_tx, mut checkpoint_rx) = tokio::sync::mpsc::channel(1);
    let checkpoints = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(c) = checkpoint_rx.recv().await {
            kept.push(c);
        }
        kept
    });
    let control = Control::new();
    let ctx = JobContext {
        client: f.world.user.clone(),
        user: None,
        settings: f.settings(),
        device: tch::Device::Cpu,
        job_tag: "control".into(),
        resume: None,
        seed: 1,
    };
    let request = JobRequest {
        request: Request::Compute,
        dataset_id: Some(
            cellpose_train_worker::girder::ObjectId::parse("dataset", &f.world.dataset_id).unwrap(),
        ),
        token: Secret::new("unused"),
        image: None,
        values: interface_values(BASE, "stopped-model", epochs),
        tool: Tool::Cellpose,
    };
    let stopper = control.clone();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut stopped_at = None;
        if stop_when.is_none() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stopper.stop(reason);
            stopped_at = Some(Instant::now());
        }
        while let Some(e) = rx.recv().await {
            if stopped_at.is_none() && stop_when.is_some_and(|p| p(&e)) {
                stopper.stop(reason);
                stopped_at = Some(Instant::now());
            }
            seen.push(e);
        }
        (seen, stopped_at)
    });
    let events = Events::new(tx).with_checkpoints(checkpoint_tx);
    let result = run_job(&ctx, &request, &events, &control).await.map(|_| ());
    let ended = Instant::now();
    drop((ctx, events));
    let (events, stopped_at) = watcher.await.unwrap();
    let stopped_at = stopped_at.expect("the job ended before the stop");
    (result, ended.duration_since(stopped_at).as_secs_f64(), events, checkpoints.await.unwrap())
}

fn stopped(result: &Result<(), JobError>) -> Option<(StopReason, Option<usize>)> {
    match result {
        Err(JobError::Stopped { reason, epoch }) => Some((*reason, *epoch)),
        _ => None,
    }
}

async fn assert_no_model(f: &Fixture) {
    reqwest::Client::new().delete(format!("{}/mock/faults", f.mock.base_url)).send().await.unwrap();
    let models: Vec<String> = f.folder("models").await.into_iter().map(|i| i.1).collect();
    assert_eq!(models, [BASE], "only the base model may be there");
}

#[tokio::test]
async fn a_cancel_during_the_intake_ends_the_job_within_one_request() {
    let f = fixture(64, 4, &TINY).await;
    // the large image lookup of the intake hangs
    fault(&f.mock, json!({"method": "GET", "path": "/item$", "count": 10, "delay_ms": 30000})).await;
    let (result, after, events, _) = run_and_stop(&f, 2, None, StopReason::Cancel).await;
    assert_eq!(stopped(&result), Some((StopReason::Cancel, None)), "{result:?}");
    assert!(after < 2.0, "ended {after:.2} s after the cancel");
    assert!(!events.iter().any(|e| matches!(e, JobEvent::Progress { .. })), "{events:?}");
    assert_no_model(&f).await;
}

#[tokio::test]
async fn a_cancel_or_a_shutdown_while_fetching_regions_ends_the_job_within_one_request() {
    for (reason, name) in [(StopReason::Cancel, "cancel"), (StopReason::Shutdown, "shutdown")] {
        let f = fixture(64, 4, &TINY).await;
        fault(&f.mock, json!({"method": "GET", "path": "/tiles/region$", "count": 100, "delay_ms": 30000}))
            .await;
        let loading =
            |e: &JobEvent| matches!(e, JobEvent::Progress { title, .. } if title == "Loading training data");
        let (result, after, _, _) = run_and_stop(&f, 2, Some(loading), reason).await;
        // the reason the job was stopped for is the one it ends with
        assert_eq!(stopped(&result), Some((reason, None)), "{name}: {result:?}");
        assert!(after < 2.0, "{name}: ended {after:.2} s after the stop");
        assert_no_model(&f).await;
    }
}

#[tokio::test]
async fn a_cancel_during_training_stops_within_a_step_and_a_shutdown_checkpoints_first() {
    let first_epoch = |e: &JobEvent| matches!(e, JobEvent::Epoch(_));
    let f = fixture(64, 4, &TINY).await;
    let (result, _, events, checkpoints) = run_and_stop(&f, 200, Some(first_epoch), StopReason::Cancel).await;
    assert!(matches!(stopped(&result), Some((StopReason::Cancel, Some(_)))), "{result:?}");
    let epochs = events.iter().filter(|e| matches!(e, JobEvent::Epoch(_))).count();
    assert!(epochs <= 2, "{epochs} epochs ran after the cancel");
    assert!(checkpoints.is_empty(), "a cancel keeps no checkpoint: {checkpoints:?}");
    assert_no_model(&f).await;

    let f = fixture(64, 4, &TINY).await;
    let (result, _, _, checkpoints) = run_and_stop(&f, 200, Some(first_epoch), StopReason::Shutdown).await;
    assert!(matches!(stopped(&result), Some((StopReason::Shutdown, Some(e))) if e <= 2), "{result:?}");
    let checkpoints: Vec<(usize, usize)> = checkpoints.iter().map(|c| (c.epoch, c.step)).collect();
    assert_eq!(checkpoints.len(), 1, "one shutdown checkpoint: {checkpoints:?}");
    assert!(checkpoints[0].0 >= 1, "{checkpoints:?}");
    assert_no_model(&f).await;
}
