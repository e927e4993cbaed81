//! Training end to end on synthetic data: loss goes down, results are reproducible, models load in
//! Python cellpose, and bad input is reported by file.

use std::sync::Arc;

use cellpose_train_worker::control::{Control, StopReason};
use cellpose_train_worker::model::{CpnetConfig, Model};
use cellpose_train_worker::synthetic::{synth_image, write_folder, SynthSpec};
use cellpose_train_worker::train::{self, NoHooks, OptimizerKind, PrepareOptions, RawExample, TrainConfig};
use cellpose_train_worker::transforms::{Channels, Normalize};
use tch::Device;

use crate::helpers::{bin, run_python, tempdir};

pub(crate) fn tiny_config() -> CpnetConfig {
    CpnetConfig { nbase: vec![2, 8, 16, 32], ..Default::default() }
}

fn synthetic_examples(n: usize, size: usize) -> Vec<train::Example> {
    let raw: Vec<RawExample> = (0..n)
        .map(|i| {
            let (image, labels) = synth_image(&SynthSpec {
                height: size,
                width: size,
                n_cells: 8,
                radius: (7.0, 11.0),
                seed: i as u64,
            });
            RawExample { name: format!("synthetic {i}"), image, labels }
        })
        .collect();
    let opts = PrepareOptions {
        channels: Channels::Pair { chan: 1, chan2: 2 },
        normalize: Normalize::default(),
        min_train_masks: 1,
    };
    train::prepare(raw, &opts).unwrap().examples
}

fn quick_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        learning_rate: 0.01,
        weight_decay: 1e-5,
        optimizer: OptimizerKind::Adamw,
        n_epochs: epochs,
        batch_size: 4,
        bsize: 64,
        seed: 7,
        device: Device::Cpu,
        ..Default::default()
    }
}

#[test]
fn training_on_synthetic_data_lowers_the_loss() {
    tch::manual_seed(0);
    let model = Model::new(tiny_config(), Device::Cpu).unwrap();
    let data = Arc::new(synthetic_examples(4, 96));
    let out =
        train::train_seg(&model, data, None, &quick_config(40), &mut NoHooks, &Control::new(), None).unwrap();
    let first: f64 = out.train_losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = out.train_losses[35..].iter().sum::<f64>() / 5.0;
    assert!(
        last < 0.7 * first,
        "loss did not go down enough: first epochs {first:.4}, last epochs {last:.4}"
    );
    assert!(out.diam_labels > 5.0 && out.diam_labels < 30.0, "diam_labels {}", out.diam_labels);
    assert!((model.net.diam_labels() - out.diam_labels).abs() < 1e-4);
}

#[test]
fn same_seed_gives_bit_identical_models_on_cpu() {
    let run = || {
        tch::manual_seed(3);
        let model = Model::new(tiny_config(), Device::Cpu).unwrap();
        let out = train::train_seg(
            &model,
            Arc::new(synthetic_examples(3, 80)),
            None,
            &quick_config(4),
            &mut NoHooks,
            &Control::new(),
            None,
        )
        .unwrap();
        (model.state_dict(), out.train_losses)
    };
    let (a, la) = run();
    let (b, lb) = run();
    assert_eq!(la, lb);
    assert!(a == b, "state dicts differ between identical seeded runs");
}

#[test]
fn cancellation_stops_within_a_step() {
    struct CancelAfter(usize, Control);
    impl train::TrainHooks for CancelAfter {
        fn on_step(&mut self, s: &train::StepInfo) {
            if s.epoch * s.steps_per_epoch + s.step + 1 >= self.0 {
                self.1.cancel();
            }
        }
    }
    let model = Model::new(tiny_config(), Device::Cpu).unwrap();
    let cancel = Control::new();
    let mut hooks = CancelAfter(3, cancel.clone());
    let err = train::train_seg(
        &model,
        Arc::new(synthetic_examples(4, 64)),
        None,
        &quick_config(50),
        &mut hooks,
        &cancel,
        None,
    )
    .unwrap_err();
    // one step per epoch: the third step ends epoch 2, the check before the next step stops it
    assert!(
        matches!(err, train::TrainError::Stopped { reason: StopReason::Cancel, epoch: 3, step: 0 }),
        "{err}"
    );
}

#[test]
fn train_cli_saves_a_model_python_cellpose_loads_and_reports_removed_images() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let spec = SynthSpec { height: 96, width: 96, n_cells: 6, radius: (8.0, 12.0), seed: 1 };
    write_folder(&data, 3, &spec).unwrap();
    // a fourth image with a single mask: removed by --min-train-masks 2, and said so
    let (img, mut labels) = synth_image(&SynthSpec { seed: 99, ..spec });
    labels.mapv_inplace(|l| u32::from(l == 1));
    cellpose_train_worker::imageio::write_image_u16(&data.join("lonely.tif"), &img).unwrap();
    cellpose_train_worker::imageio::write_labels_tiff(&data.join("lonely_masks.tif"), labels.view()).unwrap();
    let test = dir.path().join("test");
    write_folder(&test, 2, &SynthSpec { seed: 50, ..spec }).unwrap();

    let out = bin()
        .current_dir(dir.path())
        .args([
            "train",
            "--dir",
            "data",
            "--test-dir",
            "test",
            "--pretrained-model",
            "None",
            "--chan",
            "1",
            "--chan2",
            "2",
        ])
        .args([
            "--n-epochs",
            "6",
            "--batch-size",
            "2",
            "--bsize",
            "64",
            "--min-train-masks",
            "2",
            "--save-every",
            "2",
            "--save-each",
        ])
        .args(["--model-name", "mine", "--device", "cpu", "--seed", "1", "--SGD", "--learning-rate", "0.05"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 train images with number of masks less than min_train_masks (2)")
            && stderr.contains("lonely.tif (1 masks)"),
        "{stderr}"
    );
    assert!(stderr.contains("test_loss="), "{stderr}");
    let models = data.join("models");
    assert!(models.join("mine_epoch_0002").is_file() && models.join("mine_epoch_0004").is_file());
    let py = run_python(
        r#"
import sys, numpy as np, tifffile
from cellpose import models
m = models.CellposeModel(pretrained_model=sys.argv[1], gpu=False)
img = tifffile.imread(sys.argv[2])
masks, flows, _ = m.eval(img, channels=[1, 2], diameter=20.)
print('ok', masks.shape, round(float(m.diam_labels), 3), round(float(m.net.diam_mean.item()), 1))
"#,
        &[models.join("mine").to_str().unwrap(), data.join("img_000.tif").to_str().unwrap()],
    );
    assert!(py.starts_with("ok (96, 96)"), "{py}");
    assert!(py.trim().ends_with("30.0"), "{py}");
}

#[test]
fn transfer_learning_with_mismatched_channels_fails_before_training() {
    let dir = tempdir();
    let data = dir.path().join("data");
    write_folder(&data, 2, &SynthSpec { height: 64, width: 64, n_cells: 6, ..Default::default() }).unwrap();
    let three = dir.path().join("three.pth");
    assert!(bin()
        .args(["model", "init", "--nchan", "3", "--nbase", "8,16", "--out"])
        .arg(&three)
        .status()
        .unwrap()
        .success());
    let out = bin()
        .args([
            "train",
            "--chan",
            "1",
            "--chan2",
            "2",
            "--n-epochs",
            "1",
            "--device",
            "cpu",
            "--min-train-masks",
            "1",
            "--dir",
        ])
        .arg(&data)
        .arg("--pretrained-model")
        .arg(&three)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nchan differs") && stderr.contains("takes 3 input channels but 2"), "{stderr}");
    assert!(!data.join("models").exists() || std::fs::read_dir(data.join("models")).unwrap().count() == 0);
}

#[test]
fn bad_training_folders_name_the_file() {
    let dir = tempdir();
    let d = dir.path();
    let spec = SynthSpec { height: 48, width: 48, n_cells: 4, ..Default::default() };
    let (img, labels) = synth_image(&spec);
    let run = |dir: &std::path::Path| {
        let out = bin()
            .args(["train", "--n-epochs", "1", "--device", "cpu", "--pretrained-model", "None", "--dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // missing mask
    std::fs::create_dir(d.join("a")).unwrap();
    cellpose_train_worker::imageio::write_image_u16(&d.join("a/x.tif"), &img).unwrap();
    let e = run(&d.join("a"));
    assert!(e.contains("x.tif") && e.contains("no mask found") && e.contains("x_masks.tif"), "{e}");
    // size mismatch
    std::fs::create_dir(d.join("b")).unwrap();
    cellpose_train_worker::imageio::write_image_u16(&d.join("b/y.tif"), &img).unwrap();
    let small = labels.slice(ndarray::s![..40, ..]).to_owned();
    cellpose_train_worker::imageio::write_labels_tiff(&d.join("b/y_masks.tif"), small.view()).unwrap();
    let e = run(&d.join("b"));
    assert!(e.contains("y.tif") && e.contains("y_masks.tif") && e.contains("different sizes"), "{e}");
    // mask that is not a label image (a 2-channel image)
    std::fs::create_dir(d.join("c")).unwrap();
    cellpose_train_worker::imageio::write_image_u16(&d.join("c/z.tif"), &img).unwrap();
    cellpose_train_worker::imageio::write_image_u16(&d.join("c/z_masks.tif"), &img).unwrap();
    let e = run(&d.join("c"));
    assert!(e.contains("z_masks.tif") && e.contains("not a label image"), "{e}");
    // unreadable file
    std::fs::create_dir(d.join("e")).unwrap();
    std::fs::write(d.join("e/broken.tif"), b"II*\0garbage").unwrap();
    std::fs::write(d.join("e/broken_masks.tif"), b"II*\0garbage").unwrap();
    let e = run(&d.join("e"));
    assert!(e.contains("broken") && e.contains("unreadable"), "{e}");
}

/// Hooks that shut training down after a given global step and keep the checkpoint bytes.
struct StopAt {
    at: usize,
    seen: usize,
    control: Control,
    saved: Option<Vec<u8>>,
}

impl train::TrainHooks for StopAt {
    fn on_step(&mut self, _s: &train::StepInfo) {
        self.seen += 1;
        if self.seen >= self.at {
            self.control.shutdown();
        }
    }
    fn on_interrupt(&mut self, model: &Model, optim: &train::Optimizer, state: &train::TrainState) {
        self.saved = Some(train::checkpoint::encode(model, optim, state).unwrap());
    }
}

#[test]
fn interrupted_then_resumed_training_equals_an_uninterrupted_run() {
    resume_is_exact(false);
}

/// The job trains channels-last (on CPU too): the checkpoint must hold plain NCHW weights and
/// the resumed run must still equal the uninterrupted one bit for bit.
#[test]
fn interrupted_then_resumed_channels_last_training_equals_an_uninterrupted_run() {
    resume_is_exact(true);
}

fn resume_is_exact(channels_last: bool) {
    // 5 images, batch 2: 3 steps per epoch, so stopping after 4 steps is mid-epoch (epoch 1, step 1)
    let data = Arc::new(synthetic_examples(5, 72));
    let mut cfg = quick_config(4);
    cfg.batch_size = 2;
    cfg.optimizer = OptimizerKind::Sgd;
    cfg.channels_last = channels_last;
    let fresh = || {
        tch::manual_seed(11);
        Model::new(tiny_config(), Device::Cpu).unwrap()
    };
    let straight = fresh();
    let full =
        train::train_seg(&straight, data.clone(), None, &cfg, &mut NoHooks, &Control::new(), None).unwrap();

    let first = fresh();
    let control = Control::new();
    let mut stop = StopAt { at: 4, seen: 0, control: control.clone(), saved: None };
    let err = train::train_seg(&first, data.clone(), None, &cfg, &mut stop, &control, None).unwrap_err();
    assert!(
        matches!(err, train::TrainError::Stopped { reason: StopReason::Shutdown, epoch: 1, step: 1 }),
        "{err}"
    );

    // a new process: a model with other weights, then weights and optimizer state from the checkpoint
    tch::manual_seed(99);
    let second = Model::new(tiny_config(), Device::Cpu).unwrap();
    let resume = train::Resume::load(&stop.saved.expect("checkpoint written"), "memory", &second).unwrap();
    assert_eq!((resume.state.epoch, resume.state.step), (1, 1));
    let resumed =
        train::train_seg(&second, data, None, &cfg, &mut NoHooks, &Control::new(), Some(resume)).unwrap();
    assert_eq!(resumed.train_losses, full.train_losses);
    assert!(second.state_dict() == straight.state_dict(), "resumed model differs from the uninterrupted one");
}
