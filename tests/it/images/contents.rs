//! What is inside each image, read off the built image: the labels NimbusImage lists worker
//! images by, the user it runs as, and that the binary finds every library it loads.

use serde_json::Value;

use super::{docker_ok, images};

/// `docker image inspect` of `image`, the `.Config` part.
fn config(image: &str) -> Value {
    let text = docker_ok(&["image", "inspect", "-f", "{{json .Config}}", image]);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{image}: inspect: {e}: {text}"))
}

#[test]
fn each_image_carries_the_labels_nimbusimage_lists_its_tool_by() {
    let Some(images) = images("labels") else { return };
    for (image, tool) in [(&images.cellpose, "Cellpose retrain"), (&images.sam, "Cellpose-SAM retrain")] {
        let config = config(image);
        let labels = &config["Labels"];
        for key in ["isUPennContrastWorker", "isAnnotationWorker", "annotationConfigurationPanel"] {
            assert!(labels.get(key).is_some(), "{image}: label {key} missing: {labels}");
        }
        assert_eq!(labels["interfaceName"], tool, "{image}");
        assert_eq!(labels["defaultToolName"], tool, "{image}");
        assert_eq!(labels["interfaceCategory"], "Cellpose", "{image}");
        assert_eq!(labels["annotationShape"], "polygon", "{image}");
        // NimbusImage sends jobs of a GPU worker image to its `gpu` queue; girder_worker asks for
        // the NVIDIA runtime for images with this label
        assert_eq!(labels["isGPUWorker"], "true", "{image}");
        assert_eq!(labels["com.nvidia.volumes.needed"], "nvidia_driver", "{image}");
        assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/local/bin/cellpose-train-worker"]));
        assert_eq!(config["User"], "10001:10001", "{image} runs as its own user, not root");
        let env: Vec<&str> = config["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(env.contains(&"CPW_PATHS__MODELS_DIR=/models"), "{image}: {env:?}");
    }
}

#[test]
fn the_binary_in_each_image_finds_every_library_and_runs() {
    let Some(images) = images("libraries") else { return };
    for image in [&images.cellpose, &images.sam] {
        // the binary's closure, and what libtorch/cuDNN dlopen later (no GPU here to open them)
        let script = r#"set -e
ldd /usr/local/bin/cellpose-train-worker
for f in $(find /opt/venv -name '*.so*' -type f); do echo "== $f"; ldd "$f"; done"#;
        let out = docker_ok(&["run", "--rm", "--network", "host", "--entrypoint", "sh", image, "-c", script]);
        let missing: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("not found"))
            // the GPU driver's library: the NVIDIA container runtime mounts the host's
            .filter(|l| !l.trim_start().starts_with("libcuda.so.1 "))
            .collect();
        assert!(missing.is_empty(), "{image}: unresolved libraries: {missing:?}");
        assert!(out.contains("libtorch_cpu.so => /opt/venv/"), "{image}: libtorch from the image:\n{out}");
        assert!(out.contains("libtorch_cuda.so => /opt/venv/"), "{image}: CUDA libtorch linked:\n{out}");
        assert!(out.contains("libcudnn_engines_precompiled.so.9"), "{image}: cuDNN engines present");

        let help = docker_ok(&["run", "--rm", "--network", "host", image, "--help"]);
        assert!(help.contains("serve") && help.contains("--apiUrl"), "{image}: --help:\n{help}");
        // libtorch really loads and computes: a model file made and read back inside the image
        let script = "cellpose-train-worker model init --out /tmp/m.pt --nchan 2 --nbase 8,16 >&2 \
                      && cellpose-train-worker model inspect /tmp/m.pt --json";
        let out = docker_ok(&["run", "--rm", "--network", "host", "--entrypoint", "sh", image, "-c", script]);
        let inspected: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{image}: model inspect output ({e}):\n{out}"));
        assert_eq!(inspected["nbase"], serde_json::json!([2, 8, 16]), "{image}: {inspected}");
    }
}
