//! `train --pretrained-model <cpsam file>` end to end: a tiny bf16 Cellpose-SAM base trains with
//! cellpose 4's semantics through the CLI, the saved file is fp32 and loads in cellpose 4.2.1.1
//! `CellposeModel(pretrained_model=...)`, and cellpose 4's loss on the training images is lower
//! than the base's. cellpose 4's refusals (SGD, another bsize) come back as clear errors.

use cellpose_train_worker::model::torch_file::{self, DType};
use cellpose_train_worker::synthetic::{synth_image, write_folder, SynthSpec};
use cellpose_train_worker::train::RawExample;

use crate::cpsam_train::{run_train_ref, write_raw};
use crate::helpers::{bin, fixture, run_cp4_tool, tempdir};

fn spec() -> SynthSpec {
    SynthSpec { height: 64, width: 64, n_cells: 6, radius: (6.0, 10.0), seed: 21 }
}

#[test]
fn cpsam_train_cli_trains_a_model_cellpose4_loads_with_a_lower_loss() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let n = 3;
    write_folder(&data, n, &spec()).unwrap();
    let base = dir.path().join("base_cpsam.pth");
    std::fs::copy(fixture("cpsam/tiny.pth"), &base).unwrap(); // bf16 tensors: trained as fp32
    let summary = dir.path().join("summary.json");
    let out = bin()
        .args(["train", "--dir"])
        .arg(&data)
        .arg("--pretrained-model")
        .arg(&base)
        .args(["--n-epochs", "6", "--learning-rate", "1e-3", "--min-train-masks", "1"])
        .args(["--model-name", "tiny_trained", "--device", "cpu", "--summary-json"])
        .arg(&summary)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "train failed:\n{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(doc["family"], "cpsam");
    assert_eq!((doc["batch_size"].as_u64(), doc["bsize"].as_u64()), (Some(1), Some(256)));
    assert_eq!(doc["weight_decay"].as_f64(), Some(0.1));
    let trained = data.join("models/tiny_trained");
    let metas = torch_file::read_tensor_metas(&trained).unwrap();
    assert!(metas.iter().all(|m| m.dtype == DType::F32), "saved file must be float32");
    run_cp4_tool(&["check".to_string(), trained.to_str().unwrap().to_string()]);

    // cellpose 4's loss on the training images (same augmented draws for both models)
    let raw: Vec<RawExample> = (0..n)
        .map(|i| {
            let (image, labels) =
                synth_image(&SynthSpec { seed: spec().seed.wrapping_add(i as u64 * 7919), ..spec() });
            RawExample { name: format!("img_{i:03}"), image, labels }
        })
        .collect();
    let (imgs, labels) = (dir.path().join("imgs.npy"), dir.path().join("labels.npy"));
    write_raw(&raw, &imgs, &labels);
    let loss = |model: &std::path::Path| -> f64 {
        let args = ["cploss", model.to_str().unwrap(), imgs.to_str().unwrap(), labels.to_str().unwrap()];
        run_train_ref(&args).trim().parse().unwrap()
    };
    let (before, after) = (loss(&base), loss(&trained));
    eprintln!("cellpose 4 loss on the training images: base {before:.4}, trained {after:.4}");
    assert!(after < 0.9 * before, "training did not lower cellpose 4's loss: {before} -> {after}");
}

#[test]
fn cpsam_train_cli_refuses_sgd_and_other_tile_sizes() {
    let dir = tempdir();
    let data = dir.path().join("data");
    write_folder(&data, 1, &spec()).unwrap();
    for (flags, expect) in [
        (vec!["--optimizer", "sgd"], "AdamW only"),
        (vec!["--SGD"], "AdamW only"),
        (vec!["--bsize", "224"], "bsize 224 is not supported for cpsam"),
        (vec!["--chan", "1"], "do not apply"),
    ] {
        let out = bin()
            .args(["train", "--dir"])
            .arg(&data)
            .arg("--pretrained-model")
            .arg(fixture("cpsam/tiny.pth"))
            .args(["--device", "cpu"])
            .args(&flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} should fail");
        assert!(stderr.contains(expect), "{flags:?}: expected `{expect}` in:\n{stderr}");
        assert!(!data.join("models").exists(), "{flags:?}: nothing may be written");
    }
}
