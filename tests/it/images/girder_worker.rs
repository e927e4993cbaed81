//! The images launched as NimbusImage launches them: a user's click becomes girder_worker's
//! `docker_run` task on the queue the image's labels choose; girder_worker (Celery, a real redis
//! broker) runs the container, streams its output into the Girder job log and sets the job's
//! status; a cancel in Girder stops the container.

use std::time::{Duration, Instant};

use cellpose_train_worker::demo::seed::{interface_values, DemoWorld};
use cellpose_train_worker::job::store;
use serde_json::{json, Value};

use super::chain::{compute, log_lines, statuses, Chain};
use super::{docker, images, json_lines};

const RUNNING: i64 = 2;
const SUCCESS: i64 = 3;
const ERROR: i64 = 4;
const CANCELED: i64 = 5;

async fn world(chain: &Chain) -> DemoWorld {
    // small widths keep each job to seconds (the image tests load a full-width model in Python)
    crate::real_girder_job::world(&chain.girder, 128, 14, &[8, 16, 32, 64]).await
}

async fn model_names(world: &DemoWorld, root: &str) -> Vec<String> {
    let mut names: Vec<String> = store::list_models(&world.user, &world.user_id, root)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    names
}

/// Our JSON progress lines in a job's log, as `(progress, title, info)`.
fn progress(lines: &[String]) -> Vec<(f64, String, String)> {
    json_lines(&lines.join("\n"))
        .into_iter()
        .filter_map(|v| {
            let p = v["progress"].as_f64()?;
            Some((p, v["title"].as_str()?.to_string(), v["info"].as_str().unwrap_or_default().to_string()))
        })
        .collect()
}

/// Whether a container of that name still exists (running or not).
fn container_exists(name: &str) -> bool {
    let out = docker().args(["ps", "-a", "-q", "--filter", &format!("name=^/{name}$")]).output().unwrap();
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

fn unique(what: &str) -> String {
    format!("cpw-gw-{what}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn girder_worker_runs_each_images_interface_request_on_the_cpu_queue() {
    let Some(images) = images("girder_worker interface") else { return };
    let chain = Chain::start(1);
    let world = world(&chain).await;
    let token = world.user_token.expose();
    for (image, field) in [(&images.cellpose, "Primary Channel"), (&images.sam, "Channel for Slot 1")] {
        let body = json!({"image": image, "request": "interface", "datasetId": world.dataset_id});
        let (id, queue) = chain.launch(token, body).await;
        assert_eq!(queue, "cpu", "interface requests go to the cpu queue");
        let job = chain.wait_end(token, &id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], SUCCESS, "{image}: {:?}\n{}", log_lines(&job), chain.worker_log());
        let iface = world.user.worker_interfaces().get(image).await.unwrap().expect("interface posted");
        assert!(iface.get(field).is_some(), "{image} registers its own tool's fields: {iface}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_through_girder_worker_runs_on_the_gpu_queue_logs_our_progress_and_uploads() {
    let Some(images) = images("girder_worker compute") else { return };
    let chain = Chain::start(1);
    let world = world(&chain).await;
    crate::worker_queue::store_sam_base(&world).await;
    let token = world.user_token.expose();
    let t0 = Instant::now();
    let cellpose = compute(
        &images.cellpose,
        &world.dataset_id,
        interface_values("tiny-base", "via-gw", 2),
        &unique("c"),
    );
    let (id, queue) = chain.launch(token, cellpose).await;
    assert_eq!(queue, "gpu", "a GPU worker image's compute goes to the gpu queue");
    let job = chain.wait_end(token, &id, Duration::from_secs(300)).await;
    let lines = log_lines(&job);
    assert_eq!(job["status"], SUCCESS, "{lines:?}\n{}", chain.worker_log());
    eprintln!("girder_worker compute (Cellpose retrain): {:.1} s", t0.elapsed().as_secs_f64());
    eprintln!("  first log line: {}", lines.first().cloned().unwrap_or_default());
    eprintln!("  last log line:  {}", lines.last().cloned().unwrap_or_default());
    // girder_worker set the status: RUNNING when the task started, SUCCESS from the exit code
    // the image's com.nvidia.volumes.needed label makes girder_worker ask for the NVIDIA runtime;
    // a daemon without one (this machine) gets the plain run girder_worker falls back to
    assert!(lines.iter().any(|l| l.contains("runtime: nvidia")), "{lines:?}");
    let seen = statuses(&job);
    assert_eq!(seen.last(), Some(&SUCCESS), "{seen:?}");
    assert!(seen.contains(&RUNNING), "{seen:?}");
    let steps = progress(&lines);
    assert!(steps.len() >= 5, "our progress lines reach the job log: {lines:?}");
    assert!(steps.windows(2).all(|w| w[0].0 <= w[1].0), "progress in order: {steps:?}");
    assert_eq!(steps.last().map(|s| s.0), Some(1.0), "{steps:?}");
    assert!(steps.iter().any(|s| s.2.starts_with("Epoch 2/2")), "{steps:?}");
    assert_eq!(model_names(&world, ".cellpose").await, ["tiny-base", "via-gw"]);
    let reports = store::cellpose_folder(&world.user, &world.user_id, &["reports"]).await.unwrap();
    assert_eq!(world.user.items().list(&reports.id).await.unwrap().len(), 1, "the report is uploaded");

    let values = crate::cpsam_job::values_for(crate::worker_queue::SAM_BASE, "sam-via-gw", 2);
    let t0 = Instant::now();
    let (id, queue) =
        chain.launch(token, compute(&images.sam, &world.dataset_id, values, &unique("s"))).await;
    assert_eq!(queue, "gpu");
    let job = chain.wait_end(token, &id, Duration::from_secs(300)).await;
    assert_eq!(job["status"], SUCCESS, "{:?}\n{}", log_lines(&job), chain.worker_log());
    eprintln!("girder_worker compute (Cellpose-SAM retrain): {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(model_names(&world, ".cellposesam").await, ["sam-via-gw", crate::worker_queue::SAM_BASE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_compute_ends_the_job_error_with_our_message_in_its_log() {
    let Some(images) = images("girder_worker failure") else { return };
    let chain = Chain::start(1);
    let world = world(&chain).await;
    let token = world.user_token.expose();
    let mut values = interface_values("tiny-base", "never", 2);
    values["Training Tag"] = json!(["no such tag"]);
    let (id, _) =
        chain.launch(token, compute(&images.cellpose, &world.dataset_id, values, &unique("f"))).await;
    let job = chain.wait_end(token, &id, Duration::from_secs(300)).await;
    let lines = log_lines(&job);
    assert_eq!(job["status"], ERROR, "{lines:?}");
    let errors: Vec<Value> =
        json_lines(&lines.join("\n")).into_iter().filter(|l| l["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "one error line of ours: {lines:?}");
    assert_eq!(errors[0]["error"], "No training annotations found.", "{}", errors[0]);
    let info = errors[0]["info"].as_str().unwrap_or_default();
    assert!(
        info.contains("no such tag") && info.contains("their tags: cell"),
        "names the tag and the fix: {}",
        errors[0]
    );
    assert_eq!(model_names(&world, ".cellpose").await, ["tiny-base"], "nothing uploaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_in_girder_stops_the_container_within_seconds_and_touches_no_model() {
    let Some(images) = images("girder_worker cancel") else { return };
    let chain = Chain::start(1);
    let world = world(&chain).await;
    let token = world.user_token.expose();
    // the output name is an existing model: a cancel must leave it as it was
    let base = store::list_user_models(&world.user, &world.user_id).await.unwrap();
    let bytes = world.user.items().download(&base[0].id).await.unwrap();
    store::upload_model(&world.user, &world.user_id, "keep-me", bytes.clone(), "seed").await.unwrap();
    let name = unique("cancel");
    let body =
        compute(&images.cellpose, &world.dataset_id, interface_values("tiny-base", "keep-me", 2000), &name);
    let (id, _) = chain.launch(token, body).await;
    let t0 = Instant::now();
    loop {
        let job = chain.job(token, &id).await;
        if progress(&log_lines(&job)).iter().any(|s| s.2.starts_with("Epoch ")) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "no epoch: {job}\n{}", chain.worker_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(container_exists(&name), "the container runs");
    let sent = Instant::now();
    world.user.jobs().cancel(&id).await.unwrap();
    while container_exists(&name) {
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "the container is still there:\n{}",
            chain.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = sent.elapsed();
    let job = chain.wait_end(token, &id, Duration::from_secs(30)).await;
    eprintln!("cancel in Girder -> container gone: {:.2} s", gone.as_secs_f64());
    assert_eq!(job["status"], CANCELED, "{:?}", log_lines(&job));
    assert!(gone < Duration::from_secs(10), "girder_worker's stop waited for SIGKILL: {gone:?}");
    assert_eq!(model_names(&world, ".cellpose").await, ["keep-me", "tiny-base"]);
    let keep = store::list_user_models(&world.user, &world.user_id).await.unwrap();
    let keep = keep.iter().find(|i| i.name == "keep-me").unwrap();
    assert_eq!(world.user.items().download(&keep.id).await.unwrap(), bytes, "the old model is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_computes_queued_at_once_run_one_after_the_other_on_one_worker() {
    let Some(images) = images("girder_worker queue") else { return };
    let chain = Chain::start(1);
    let world = world(&chain).await;
    let token = world.user_token.expose();
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let body = compute(
            &images.cellpose,
            &world.dataset_id,
            interface_values("tiny-base", name, 2),
            &unique(name),
        );
        ids.push(chain.launch(token, body).await.0);
    }
    let mut spans = Vec::new();
    for id in &ids {
        let job = chain.wait_end(token, id, Duration::from_secs(400)).await;
        assert_eq!(job["status"], SUCCESS, "{:?}\n{}", log_lines(&job), chain.worker_log());
        let at = |status: i64| {
            job["timestamps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["status"] == status)
                .map(|t| t["time"].to_string())
        };
        spans.push((at(RUNNING).expect("RUNNING"), at(SUCCESS).expect("SUCCESS")));
    }
    // one Celery process: the second job starts only after the first has ended (ISO times)
    spans.sort();
    assert!(spans[1].0 >= spans[0].1, "the jobs overlapped: {spans:?}");
    assert_eq!(model_names(&world, ".cellpose").await, ["first", "second", "tiny-base"]);
}
