//! `export --format bioimageio`: the package of a tiny model passes `bioimageio test`
//! (bioimageio.core 0.11.0 with bioimageio.spec 0.5.14.3, in .venv-bioimageio from
//! scripts/setup.sh), and its test output is what Python cellpose computes from the test input
//! with its own normalisation, within the package's tolerance: cellpose 3.1.1.2 for a CPnet,
//! cellpose 4.2.1.1 (.venv-cp4 first on the checker's PYTHONPATH) for a Cellpose-SAM model.

use std::path::{Path, PathBuf};
use std::process::Command;

use cellpose_train_worker::model::torch_file::{self, DType};

use crate::helpers::{bin, cp4_path, fixture, repo_root, run_cp4_tool, run_python, run_python_env, tempdir};

/// The `bioimageio` command of .venv-bioimageio (`CPW_BIOIMAGEIO` overrides it).
fn bioimageio() -> PathBuf {
    std::env::var_os("CPW_BIOIMAGEIO")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-bioimageio/bin/bioimageio"))
}

/// Runs `export --format bioimageio` on `model` into `pkg`; panics with its stderr on failure.
fn export(model: &Path, pkg: &Path, extra: &[&str]) {
    let out = bin()
        .args(["export", "--format", "bioimageio", "--model"])
        .arg(model)
        .arg("--out")
        .arg(pkg)
        .args(["--author", "Ada Lovelace", "--author", "Alan Turing", "--parent", "cyto3"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn read_rdf(pkg: &Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(pkg.join("rdf.yaml")).unwrap()).unwrap()
}

/// `bioimageio test` on the package (with `pythonpath` first on the checker's PYTHONPATH);
/// asserts that it passed and that it reproduced the test outputs.
fn assert_checker_passes(checker: &Path, pkg: &Path, summary: &Path, pythonpath: Option<&Path>) {
    let mut cmd = Command::new(checker);
    cmd.arg("test").arg(pkg.join("rdf.yaml")).arg("--summary").arg(summary).env("PYTHONWARNINGS", "ignore");
    if let Some(p) = pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    let test = cmd.output().expect("failed to start bioimageio");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(summary)
            .unwrap_or_else(|_| panic!("no summary.json: {}", String::from_utf8_lossy(&test.stderr))),
    )
    .expect("json");
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
}

/// `bioimageio test` on a Cellpose-SAM package (the job's), skipped when .venv-bioimageio is absent.
pub(crate) fn check_package_if_possible(pkg: &Path, dir: &Path) {
    let checker = bioimageio();
    if !checker.is_file() {
        eprintln!("skipped: {} is absent (scripts/setup.sh creates .venv-bioimageio)", checker.display());
        return;
    }
    assert_checker_passes(&checker, pkg, &dir.join("summary.json"), Some(&cp4_path()));
}

/// (max |cellpose - test output|, max |test output|) from a Python line printing both.
fn parse_diff(py: &str, tol: f64) {
    let vals: Vec<f64> = py.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    assert_eq!(vals.len(), 2, "{py}");
    eprintln!(
        "cellpose vs package test output: max |diff| {:.3e} (max |output| {:.3e}, tolerance {tol:.1e})",
        vals[0], vals[1]
    );
    assert!(vals[0] <= tol, "cellpose differs from the package's test output by {} > {tol}", vals[0]);
}

fn absolute_tolerance(rdf: &serde_yaml_ng::Value) -> f64 {
    rdf["config"]["bioimageio"]["reproducibility_tolerance"][0]["absolute_tolerance"].as_f64().unwrap()
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
    export(&model, &pkg, &[]);
    for f in ["rdf.yaml", "weights.pt", "cellpose_cpnet.py", "environment.yaml", "test_input.npy"] {
        assert!(pkg.join(f).is_file(), "{f} missing");
    }
    // the weights are the model file itself, byte for byte
    assert_eq!(std::fs::read(pkg.join("weights.pt")).unwrap(), std::fs::read(&model).unwrap());
    let rdf = read_rdf(&pkg);
    assert_eq!(rdf["authors"][1]["name"].as_str(), Some("Alan Turing"));
    assert_eq!(rdf["config"]["cellpose"]["parent_model"].as_str(), Some("cyto3"));

    assert_checker_passes(&checker, &pkg, &dir.path().join("summary.json"), None);

    // cellpose's own path: its normalize_img and CPnet on the test input, against our output
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
    parse_diff(&py, absolute_tolerance(&rdf));
}

/// cellpose 4's path on the package: `normalize_img` on the test input, the weights loaded by
/// `CPSAM().load_model` (tools/cpsam_ref.py builds the tiny encoder for a tiny file), forward.
fn cellpose4_against_test_output(pkg: &Path, tol: f64) {
    let pythonpath = std::env::join_paths([cp4_path(), repo_root().join("tools")]).unwrap();
    let py = run_python_env(
        r#"
import sys, numpy as np, torch
from cellpose import transforms
import cpsam_ref
pkg = sys.argv[1]
x = np.load(pkg + "/test_input.npy")[0]
want = np.load(pkg + "/test_output.npy")
img = transforms.normalize_img(np.moveaxis(x, 0, -1), axis=-1)
net = cpsam_ref.load_net(pkg + "/weights.pt")
with torch.no_grad():
    y = net(torch.from_numpy(np.moveaxis(img, -1, 0)[None].astype(np.float32)))[0].numpy()
print(float(np.abs(y - want).max()), float(np.abs(want).max()))
"#,
        &[pkg.to_str().unwrap()],
        &[("PYTHONPATH", pythonpath.to_str().unwrap()), ("OMP_NUM_THREADS", "2")],
    );
    parse_diff(&py, tol);
}

#[test]
fn bioimageio_package_of_a_tiny_cpsam_model_passes_bioimageio_test() {
    let checker = bioimageio();
    if !checker.is_file() {
        eprintln!("skipped: {} is absent (scripts/setup.sh creates .venv-bioimageio)", checker.display());
        return;
    }
    let dir = tempdir();
    let pkg = dir.path().join("pkg");
    // the fixture holds bf16 tensors: the package's weights are its fp32 copy
    let tiny = fixture("cpsam/tiny.pth");
    export(&tiny, &pkg, &[]);
    for f in ["rdf.yaml", "weights.pt", "cellpose_sam.py", "environment.yaml", "test_input.npy", "README.md"]
    {
        assert!(pkg.join(f).is_file(), "{f} missing");
    }
    let metas = torch_file::read_tensor_metas(&pkg.join("weights.pt")).unwrap();
    let source = torch_file::read_tensor_metas(&tiny).unwrap();
    assert_eq!(metas.len(), source.len());
    assert!(metas.iter().all(|m| m.dtype == DType::F32), "weights.pt must be fp32");
    let env = std::fs::read_to_string(pkg.join("environment.yaml")).unwrap();
    assert!(env.contains("cellpose==4.2.1.1") && env.contains("torch==2.11.0"), "{env}");
    let rdf = read_rdf(&pkg);
    let axes = rdf["inputs"][0]["axes"].as_sequence().unwrap();
    assert_eq!(axes[1]["channel_names"].as_sequence().map(|c| c.len()), Some(3));
    assert_eq!((axes[2]["size"].as_i64(), axes[3]["size"].as_i64()), (Some(256), Some(256)));
    assert_eq!(rdf["config"]["cellpose"]["cellpose_version"].as_str(), Some("4.2.1.1"));
    let readme = std::fs::read_to_string(pkg.join("README.md")).unwrap();
    assert!(readme.contains("Cellpose-SAM") && readme.contains("## Validation"), "{readme}");

    assert_checker_passes(&checker, &pkg, &dir.path().join("summary.json"), Some(&cp4_path()));
    cellpose4_against_test_output(&pkg, absolute_tolerance(&rdf));
}

/// Full-size Cellpose-SAM (ViT-L, 305 M parameters, random weights from cellpose 4's own
/// `CPSAM()`): the export of a 1.2 GB file passes `bioimageio test`.
#[test]
#[ignore = "full-size Cellpose-SAM: a 1.2 GB model, several GB of memory, minutes on 2 cores"]
fn bioimageio_package_of_a_full_size_cpsam_model_passes_bioimageio_test() {
    let checker = bioimageio();
    assert!(checker.is_file(), "{} is absent (scripts/setup.sh creates .venv-bioimageio)", checker.display());
    let dir = tempdir();
    let model = dir.path().join("random-cpsam.pth");
    let t = std::time::Instant::now();
    run_cp4_tool(&["vitl".to_string(), model.to_str().unwrap().to_string(), "--seed".into(), "3".into()]);
    eprintln!("random full-size cpsam made in {:.1} s", t.elapsed().as_secs_f64());
    let pkg = dir.path().join("pkg");
    let t = std::time::Instant::now();
    export(&model, &pkg, &[]);
    eprintln!("exported in {:.1} s", t.elapsed().as_secs_f64());
    // an fp32 file without a `module.` prefix is copied as it is
    assert_eq!(
        std::fs::metadata(pkg.join("weights.pt")).unwrap().len(),
        std::fs::metadata(&model).unwrap().len()
    );
    let rdf = read_rdf(&pkg);
    let t = std::time::Instant::now();
    assert_checker_passes(&checker, &pkg, &dir.path().join("summary.json"), Some(&cp4_path()));
    eprintln!("bioimageio test in {:.1} s", t.elapsed().as_secs_f64());
    cellpose4_against_test_output(&pkg, absolute_tolerance(&rdf));
}
