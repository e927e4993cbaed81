//! `export --format bioimageio`: the package of a tiny model passes `bioimageio test`
//! (bioimageio.core 0.11.0 with bioimageio.spec 0.5.14.3, in .venv-bioimageio from
//! scripts/setup.sh), and its test output is what Python cellpose 3.1.1.2 computes from the
//! test input with its own normalisation, within the package's tolerance.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::{bin, repo_root, run_python, tempdir};

/// The `bioimageio` command of .venv-bioimageio (`CPW_BIOIMAGEIO` overrides it).
fn bioimageio() -> PathBuf {
    std::env::var_os("CPW_BIOIMAGEIO")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-bioimageio/bin/bioimageio"))
}

#[test]
fn bioimageio_package_of_a_tiny_model_passes_bioimageio_test() {
    let checker = bioimageio();
    if !checker.is_file() {
        eprintln!("skipped: {} is absent (scripts/setup.sh creates .venv-bioimageio)", checker.display());
        return;
    }
    let dir = tempdir();
    let model = dir.path().join("tiny");
    let init = bin()
        .args(["model", "init", "--nchan", "2", "--nbase", "8,16,32,64", "--seed", "3", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let pkg = dir.path().join("pkg");
    let out = bin()
        .args(["export", "--format", "bioimageio", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&pkg)
        .args(["--author", "Ada Lovelace", "--author", "Alan Turing", "--parent", "cyto3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["rdf.yaml", "weights.pt", "cellpose_cpnet.py", "environment.yaml", "test_input.npy"] {
        assert!(pkg.join(f).is_file(), "{f} missing");
    }
    // the weights are the model file itself, byte for byte
    assert_eq!(std::fs::read(pkg.join("weights.pt")).unwrap(), std::fs::read(&model).unwrap());
    let rdf: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(pkg.join("rdf.yaml")).unwrap()).unwrap();
    assert_eq!(rdf["authors"][1]["name"].as_str(), Some("Alan Turing"));
    assert_eq!(rdf["config"]["cellpose"]["parent_model"].as_str(), Some("cyto3"));

    let summary = dir.path().join("summary.json");
    let test = Command::new(&checker)
        .arg("test")
        .arg(pkg.join("rdf.yaml"))
        .arg("--summary")
        .arg(&summary)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .expect("failed to start bioimageio");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).expect("summary.json")).expect("json");
    let failures: Vec<String> = report["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["status"] != "passed")
        .map(|d| format!("{}: {}", d["name"], d["errors"]))
        .collect();
    assert!(test.status.success() && report["status"] == "passed", "bioimageio test failed: {failures:?}");
    let names: Vec<&str> =
        report["details"].as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
    assert!(names.iter().any(|n| n.starts_with("Reproduce test outputs")), "{names:?}");

    // cellpose's own path: its normalize_img and CPnet on the test input, against our output
    let tol =
        rdf["config"]["bioimageio"]["reproducibility_tolerance"][0]["absolute_tolerance"].as_f64().unwrap();
    let nbase = serde_json::to_string(
        &rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["nbase"]
            .as_sequence()
            .expect("nbase")
            .iter()
            .filter_map(|v| v.as_i64())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let py = run_python(
        r#"
import sys, json, numpy as np, torch
from cellpose import transforms
from cellpose.resnet_torch import CPnet
pkg, nbase = sys.argv[1], json.loads(sys.argv[2])
x = np.load(pkg + "/test_input.npy")[0]
want = np.load(pkg + "/test_output.npy")
img = transforms.normalize_img(np.moveaxis(x, 0, -1), axis=-1)
net = CPnet(nbase, 3, 3)
net.load_model(pkg + "/weights.pt", device=torch.device("cpu"))
net.eval()
with torch.no_grad():
    y = net(torch.from_numpy(np.moveaxis(img, -1, 0)[None].astype(np.float32)))[0].numpy()
print(float(np.abs(y - want).max()), float(np.abs(want).max()))
"#,
        &[pkg.to_str().unwrap(), &nbase],
    );
    let vals: Vec<f64> = py.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    assert_eq!(vals.len(), 2, "{py}");
    eprintln!(
        "cellpose vs package test output: max |diff| {:.3e} (max |output| {:.3e}, tolerance {tol:.1e})",
        vals[0], vals[1]
    );
    assert!(vals[0] <= tol, "cellpose differs from the package's test output by {} > {tol}", vals[0]);
}
