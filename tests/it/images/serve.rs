//! The long-running queue worker in the image (`docker run IMAGE serve`), as the README documents
//! it: configured from `CPW_*` variables, taking a job from a real Girder's queue and handing it
//! back on `docker stop`.

use std::time::{Duration, Instant};

use cellpose_train_worker::girder::JobStatus;
use cellpose_train_worker::job::store;

use super::{docker, docker_ok, images, run_args, Container};
use crate::real_girder::RealGirder;
use crate::worker_queue::{log_of, submit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_in_the_image_takes_a_job_and_hands_it_back_on_docker_stop() {
    let Some(images) = images("serve image") else { return };
    const GRACE_S: u64 = 20;
    let real = RealGirder::start();
    let world = crate::real_girder_job::world(&real, 192, 24, &[8, 16, 32, 64]).await;
    let job = submit(&world, "served", 200).await;

    let c = Container::named("serve");
    let mut args = run_args(&c, true);
    let grace = GRACE_S.to_string();
    for (k, v) in [
        ("CPW_GIRDER__API_URL", real.api_url.as_str()),
        ("CPW_GIRDER__API_KEY", world.admin_api_key.expose()),
        ("CPW_QUEUE__POLL_INTERVAL_S", "0.3"),
        ("CPW_QUEUE__HEARTBEAT_S", "0.5"),
        ("CPW_QUEUE__SHUTDOWN_GRACE_S", &grace),
        ("CPW_TRAINING__CHECKPOINT_EVERY", "2"),
        ("CPW_SERVER__LISTEN", "127.0.0.1:0"),
    ] {
        args.extend(["-e".to_string(), format!("{k}={v}")]);
    }
    args.push(images.cellpose.clone());
    args.extend(["serve".to_string(), "--worker-id".to_string(), "in-image".to_string()]);
    docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let t0 = Instant::now();
    loop {
        let j = world.user.jobs().get(&job.id).await.unwrap();
        if lines_of(&log_of(&j)).iter().any(|l| l.starts_with("Checkpoint saved after epoch")) {
            break;
        }
        let (out, err) = c.logs();
        assert!(c.state().is_some_and(|(running, _)| running), "serve ended:\n{out}\n{err}");
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "no checkpoint within 180 s: {:?}\n{err}",
            log_of(&j)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let sent = Instant::now();
    let stop = docker().args(["stop", "-t", &grace, &c.name]).output().unwrap();
    let took = sent.elapsed();
    assert!(stop.status.success());
    let code = c.wait_exit(Duration::from_secs(1)).expect("stopped");
    let (_, err) = c.logs();
    eprintln!("docker stop of serve mid-training: exited {code} after {:.2} s", took.as_secs_f64());
    assert_eq!(code, 0, "serve exits cleanly on SIGTERM:\n{err}");
    assert!(took < Duration::from_secs(GRACE_S), "took {took:?}, grace {GRACE_S} s:\n{err}");
    let j = world.user.jobs().get(&job.id).await.unwrap();
    let lines = lines_of(&log_of(&j));
    assert!(
        lines.iter().any(|l| l.starts_with("[cellpose-train-worker] release round=1 worker=in-image")),
        "handed back: {lines:?}"
    );
    assert_eq!(j.status, JobStatus::RUNNING, "a handed-back job waits for the next worker");
    let models = store::list_user_models(&world.user, &world.user_id).await.unwrap();
    assert!(models.iter().all(|m| m.name != "served"), "nothing uploaded");
}

/// Every line of a job log (an entry of a real Girder's log is one PUT and may hold several).
fn lines_of(entries: &[String]) -> Vec<String> {
    entries.iter().flat_map(|e| e.lines().map(str::to_string)).collect()
}
