//! Training through the CLI as labs compare it with cellpose: cellpose's per-epoch log line at
//! cellpose's cadence, and the best-validation model kept and named.

use cellpose_train_worker::synthetic::{write_folder, SynthSpec};

use crate::helpers::{bin, tempdir};

fn metrics(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// `--verbose` prints `{epoch}, train_loss=.., test_loss=.., LR=.., time ..s` at epochs 0, 5, 10
/// (cellpose 3.1.1.2 `train_seg`: `iepoch == 5 or iepoch % 10 == 0`), with the loss averaged
/// over the epochs since the previous line, test_loss 0 without a test set; the log has it too.
#[test]
fn verbose_train_prints_cellpose_epoch_lines_at_cellpose_epochs() {
    let dir = tempdir();
    let spec = SynthSpec { height: 64, width: 64, n_cells: 5, radius: (7.0, 10.0), seed: 3 };
    write_folder(&dir.path().join("data"), 2, &spec).unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args(["train", "--dir", "data", "--pretrained-model", "None", "--chan", "1", "--chan2", "2"])
        .args(["--n-epochs", "12", "--batch-size", "2", "--bsize", "32", "--nbase", "8,16"])
        .args(["--model-name", "m", "--device", "cpu", "--seed", "1", "--verbose"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = regex::Regex::new(
        r"^(\d+), train_loss=(\d+\.\d{4}), test_loss=0\.0000, LR=(\d+\.\d{6}), time \d+\.\d{2}s$",
    )
    .unwrap();
    let lines: Vec<&str> = stdout.lines().filter(|l| line.is_match(l)).collect();
    let epochs: Vec<usize> = lines.iter().map(|l| line.captures(l).unwrap()[1].parse().unwrap()).collect();
    assert_eq!(epochs, vec![0, 5, 10], "stdout:\n{stdout}");
    for l in &lines {
        assert!(stderr.contains(l), "{l} missing from the log:\n{stderr}");
    }
    // line 10's loss is the mean of epochs 6..=10 (0-based), as cellpose's lavg / nsum
    let history = metrics(&dir.path().join("data/models/m.metrics.jsonl"));
    let losses: Vec<f64> =
        history.iter().filter(|l| l["stage"] == "train").map(|l| l["train_loss"].as_f64().unwrap()).collect();
    let mean: f64 = losses[6..=10].iter().sum::<f64>() / 5.0;
    let printed: f64 = line.captures(lines[2]).unwrap()[2].parse().unwrap();
    assert!((printed - mean).abs() <= 5e-5, "printed {printed}, mean of epochs 6..=10 {mean}");
    // the LR column is the schedule's: AdamW 0.005, warm-up np.linspace(0, lr, 10)[5]
    let lr5: f64 = line.captures(lines[1]).unwrap()[3].parse().unwrap();
    assert!((lr5 - 0.005 * 5.0 / 9.0).abs() < 1e-6, "LR at epoch 5: {lr5}");
}

/// With --test-dir the kept model is the best-scoring epoch's: a good base model fine-tuned
/// with a destructive learning rate scores best after its first epoch (the warm-up LR is 0),
/// so the saved model must be epoch 1's, scored again as such, and the output names it.
#[test]
fn train_with_a_test_set_keeps_and_names_the_best_epoch() {
    let dir = tempdir();
    let spec = SynthSpec { height: 96, width: 96, n_cells: 6, radius: (8.0, 12.0), seed: 1 };
    write_folder(&dir.path().join("data"), 4, &spec).unwrap();
    write_folder(&dir.path().join("test"), 2, &SynthSpec { seed: 50, ..spec }).unwrap();
    let common = ["--chan", "1", "--chan2", "2", "--batch-size", "2", "--bsize", "64", "--device", "cpu"];
    let base = bin()
        .current_dir(dir.path())
        .args(["train", "--dir", "data", "--pretrained-model", "None", "--nbase", "16,32,64,128"])
        .args(common)
        .args(["--n-epochs", "30", "--model-name", "base", "--seed", "1", "--SGD", "--learning-rate", "0.1"])
        .output()
        .unwrap();
    assert!(base.status.success(), "{}", String::from_utf8_lossy(&base.stderr));

    let out = bin()
        .current_dir(dir.path())
        .args(["train", "--dir", "data", "--test-dir", "test", "--pretrained-model", "data/models/base"])
        .args(common)
        .args(["--n-epochs", "6", "--eval-every", "1", "--model-name", "ft", "--seed", "1", "--SGD"])
        .args(["--learning-rate", "3", "--summary-json", "summary.json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let history = metrics(&dir.path().join("data/models/ft.metrics.jsonl"));
    let scored: Vec<(u64, f64)> = history
        .iter()
        .filter(|l| l["stage"] == "train" && l["ap"].is_object())
        .map(|l| (l["epoch"].as_u64().unwrap(), l["ap"]["0.5"].as_f64().unwrap()))
        .collect();
    assert_eq!(scored.len(), 5, "epochs 1..=5 scored (6 is the after line): {scored:?}");
    let after = history.iter().find(|l| l["stage"] == "after").expect("after line");
    let best = scored.iter().fold(scored[0], |b, &s| if s.1 >= b.1 { s } else { b });
    let last_epoch_ap = scored.last().unwrap().1;
    assert!(best.1 > last_epoch_ap, "the destructive fine-tune must lose AP: {scored:?}");
    assert_eq!(after["best_epoch"].as_u64(), Some(best.0), "{after}");
    // the after line re-scores the weights now in the model: the best epoch's score proves the
    // restore, the F1 and PQ ride along
    assert_eq!(after["ap"]["0.5"].as_f64(), Some(best.1), "{after}");
    assert!(after["f1"]["0.5"].is_number() && after["pq"]["0.5"].is_number(), "{after}");
    assert!(stderr.contains(&format!("kept the model of epoch {} of 6", best.0)), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["best_epoch"].as_u64(), Some(best.0));
    let csv = std::fs::read_to_string(dir.path().join("data/models/ft.qc.csv")).expect("qc.csv");
    assert!(csv.starts_with("image,threshold,n_true,n_pred,tp,fp,fn,ap,precision,recall,f1,pq\n"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 2 * 3 + 2 * 3, "{csv}");
}
