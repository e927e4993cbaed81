//! Each image as NimbusImage runs it: `docker run IMAGE --apiUrl .. --request interface|compute`
//! against a real Girder 5.0.21, with built-in weights in the image's models folder (mounted, as
//! docker/compose.yml does), and stopped with `docker stop` as girder_worker cancels a job.

use std::time::{Duration, Instant};

use cellpose_train_worker::demo::seed::{interface_values, DemoWorld};
use cellpose_train_worker::job::store;
use serde_json::{json, Value};

use super::{
    docker, docker_ok, images, json_lines, oneshot_args, readable_dir, run_args, run_oneshot, Container,
};
use crate::helpers::{bin, fixture, run_cp4_tool, run_python, tempdir};
use crate::real_girder::RealGirder;

/// Names of the items in the user's `<root>/models` (`.cellpose` or `.cellposesam`).
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

/// The bytes of the user's model `name` under `root`.
async fn model_bytes(world: &DemoWorld, root: &str, name: &str) -> bytes::Bytes {
    let items = store::list_models(&world.user, &world.user_id, root).await.unwrap();
    let item = items.into_iter().find(|i| i.name == name).unwrap_or_else(|| panic!("no model {name}"));
    world.user.items().download(&item.id).await.unwrap()
}

/// The Base Model choices of the interface Girder stored for `image`.
async fn offered(world: &DemoWorld, image: &str) -> Vec<Value> {
    let iface = world.user.worker_interfaces().get(image).await.unwrap().expect("interface stored");
    iface["Base Model"]["items"].as_array().cloned().unwrap_or_default()
}

fn assert_success(what: &str, out: &std::process::Output, real: &RealGirder) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        real.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cellpose_image_registers_its_tool_and_trains_a_model_cellpose_loads() {
    let Some(images) = images("cellpose image") else { return };
    let real = RealGirder::start();
    // cellpose's full widths: Python cellpose builds CPnet at these to load the trained file
    let world = crate::real_girder_job::world(&real, 128, 14, &[32, 64, 128, 256]).await;
    let dir = tempdir();
    // a built-in's weights where the image keeps them (/models): here a tiny CPnet named cyto3
    let cyto3 = dir.path().join("cyto3.pt");
    let made =
        bin().args(["model", "init", "--nchan", "2", "--nbase", "8,16,32,64", "--out"]).arg(&cyto3).output();
    assert!(made.unwrap().status.success());
    let models = readable_dir(dir.path(), "models", &[("cyto3", &std::fs::read(&cyto3).unwrap())]);
    let mount = [format!("{}:/models:ro", models.display())];

    let (_c, out) = run_oneshot(
        &images.cellpose,
        &real.api_url,
        &world,
        "interface",
        &json!({"image": images.cellpose}),
        &mount,
    );
    assert_success("interface", &out, &real);
    let bases = offered(&world, &images.cellpose).await;
    assert!(bases.contains(&json!("cyto3")), "the image's built-in is offered: {bases:?}");
    assert!(bases.contains(&json!("tiny-base")), "the user's model is offered: {bases:?}");
    let iface = world.user.worker_interfaces().get(&images.cellpose).await.unwrap().unwrap();
    assert!(iface.get("Primary Channel").is_some(), "Cellpose retrain's fields: {iface}");

    let params = json!({"workerInterface": interface_values("tiny-base", "from-image", 2)});
    let (_c, out) = run_oneshot(&images.cellpose, &real.api_url, &world, "compute", &params, &mount);
    assert_success("compute", &out, &real);
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines.last().and_then(|l| l["progress"].as_f64()), Some(1.0), "{lines:?}");
    assert_eq!(model_names(&world, ".cellpose").await, ["from-image", "tiny-base"]);

    let path = dir.path().join("from-image");
    std::fs::write(&path, model_bytes(&world, ".cellpose", "from-image").await).unwrap();
    let py = run_python(
        r#"
import sys, numpy as np
from cellpose import models
m = models.CellposeModel(pretrained_model=sys.argv[1], gpu=False)
masks = m.eval(np.random.RandomState(0).rand(2, 64, 64).astype('float32'), channels=[1, 2], channel_axis=0, diameter=30.)[0]
print('ok', masks.shape)
"#,
        &[path.to_str().unwrap()],
    );
    assert_eq!(py.trim(), "ok (64, 64)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cellpose_sam_image_registers_its_tool_and_trains_a_model_cellpose4_loads() {
    let Some(images) = images("cellpose-sam image") else { return };
    let real = RealGirder::start();
    let world = crate::real_girder_job::world(&real, 128, 14, &[8, 16, 32, 64]).await;
    crate::worker_queue::store_sam_base(&world).await;
    let dir = tempdir();
    let tiny = std::fs::read(fixture("cpsam/tiny.pth")).unwrap();
    let models = readable_dir(dir.path(), "models", &[("cpsam_v2", &tiny)]);
    let mount = [format!("{}:/models:ro", models.display())];

    // the image is named like the other tool's: its own setting decides which tool it registers
    let params = json!({"image": "cellpose-train-worker:any-name"});
    let (_c, out) = run_oneshot(&images.sam, &real.api_url, &world, "interface", &params, &mount);
    assert_success("interface", &out, &real);
    let bases = offered(&world, "cellpose-train-worker:any-name").await;
    assert!(bases.contains(&json!("cellpose-sam")), "the image's cpsam_v2 is offered: {bases:?}");
    assert!(bases.contains(&json!(crate::worker_queue::SAM_BASE)), "the user's model: {bases:?}");
    let iface = world.user.worker_interfaces().get("cellpose-train-worker:any-name").await.unwrap().unwrap();
    assert!(iface.get("Channel for Slot 1").is_some(), "Cellpose-SAM retrain's fields: {iface}");

    let values = crate::cpsam_job::values_for(crate::worker_queue::SAM_BASE, "sam-from-image", 2);
    let (_c, out) = run_oneshot(
        &images.sam,
        &real.api_url,
        &world,
        "compute",
        &json!({"workerInterface": values}),
        &mount,
    );
    assert_success("compute", &out, &real);
    assert_eq!(model_names(&world, ".cellposesam").await, ["sam-from-image", crate::worker_queue::SAM_BASE]);
    let path = dir.path().join("sam-from-image");
    std::fs::write(&path, model_bytes(&world, ".cellposesam", "sam-from-image").await).unwrap();
    run_cp4_tool(&["check", path.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_cancels_a_training_compute_within_seconds_and_uploads_nothing() {
    let Some(images) = images("docker stop") else { return };
    let real = RealGirder::start();
    let world = crate::real_girder_job::world(&real, 128, 14, &[8, 16, 32, 64]).await;
    let c = Container::named("stop");
    let mut args = run_args(&c, true);
    args.push(images.cellpose.clone());
    let params = json!({"workerInterface": interface_values("tiny-base", "never-stored", 2000)});
    args.extend(oneshot_args(&real.api_url, &world, "compute", &params));
    docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // training has started: an epoch was reported
    let t0 = Instant::now();
    loop {
        let (stdout, stderr) = c.logs();
        let epoch =
            json_lines(&stdout).iter().any(|l| l["info"].as_str().is_some_and(|i| i.starts_with("Epoch ")));
        if epoch {
            break;
        }
        assert!(c.state().is_some_and(|(running, _)| running), "the container ended:\n{stdout}\n{stderr}");
        assert!(t0.elapsed() < Duration::from_secs(120), "no epoch within 120 s:\n{stdout}\n{stderr}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // girder_worker's cancel: `container.stop()`, SIGTERM then SIGKILL after 10 s
    let sent = Instant::now();
    let stop = docker().args(["stop", "-t", "10", &c.name]).output().unwrap();
    let took = sent.elapsed();
    assert!(stop.status.success());
    let code = c.wait_exit(Duration::from_secs(1)).expect("stopped");
    let (stdout, stderr) = c.logs();
    eprintln!("docker stop of a training one-shot compute: exited {code} after {:.2} s", took.as_secs_f64());
    assert_ne!(code, 137, "killed by SIGKILL after the grace period: SIGTERM was ignored\n{stderr}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?} to stop the job:\n{stderr}");
    let last = json_lines(&stdout).pop().unwrap_or_default();
    assert_eq!(last["type"], "error", "NimbusImage's error line last: {stdout}");
    assert!(last["info"].as_str().unwrap_or_default().contains("Nothing was uploaded"), "{last}");
    assert_eq!(model_names(&world, ".cellpose").await, ["tiny-base"], "nothing uploaded");
}
