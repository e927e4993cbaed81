//! Golden tests for the training pieces against Python cellpose 3.1.1.2 / torch 2.11, on fixtures
//! made by tools/make_train_fixtures.py.

use cellpose_train_worker::train::loss::seg_loss;
use cellpose_train_worker::train::optim::{Optimizer, OptimizerKind};
use cellpose_train_worker::train::schedule::lr_schedule;
use cellpose_train_worker::transforms::{normalize_img, Normalize};
use ndarray::{Array1, Array3, ArrayD};
use ndarray_npy::read_npy;
use tch::{Kind, Tensor};

use crate::helpers::fixture;

fn npy<T: ndarray_npy::ReadableElement>(name: &str) -> ArrayD<T> {
    read_npy(fixture(&format!("train/{name}"))).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

fn to_tensor(a: &ArrayD<f32>) -> Tensor {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(a.as_slice().unwrap()).view(shape.as_slice())
}

#[test]
fn lr_schedule_equals_train_seg_exactly() {
    let text = std::fs::read_to_string(fixture("train/lr_schedule.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let lr = c["learning_rate"].as_f64().unwrap();
        let n = c["n_epochs"].as_u64().unwrap() as usize;
        let want: Vec<f64> = c["lr"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got = lr_schedule(lr, n);
        assert_eq!(got, want, "lr={lr} n_epochs={n}");
    }
}

#[test]
fn seg_loss_equals_loss_fn_seg() {
    let y = to_tensor(&npy::<f32>("loss3_y.npy"));
    let lbl = to_tensor(&npy::<f32>("loss3_lbl.npy"));
    let want = npy::<f64>("loss3_value.npy")[[0]];
    let got = seg_loss(&y, &lbl).unwrap().double_value(&[]);
    assert!((got - want).abs() < 1e-6 * want.abs().max(1.0), "ours {got} cellpose {want}");
}

#[test]
fn normalize_img_matches_cellpose() {
    let input: Array3<f32> = npy::<f32>("norm_input.npy").into_dimensionality().unwrap();
    for (file, opts) in [
        ("norm_default.npy", Normalize::default()),
        ("norm_p5_95_invert.npy", Normalize { percentile: (5.0, 95.0), invert: true, ..Default::default() }),
        ("norm_lowhigh.npy", Normalize { lowhigh: Some((100.0, 2000.0)), ..Default::default() }),
    ] {
        let want: Array3<f32> = npy::<f32>(file).into_dimensionality().unwrap();
        let mut got = input.clone();
        normalize_img(&mut got, &opts);
        let diff = (&got - &want).mapv(f32::abs).fold(0f32, |a, &b| a.max(b));
        assert!(diff < 2e-6, "{file}: max abs diff {diff}");
    }
}

#[test]
fn optimizers_follow_torch_optim_updates() {
    let p0: Array1<f32> = npy::<f32>("optim_p0.npy").into_dimensionality().unwrap();
    let grads = to_tensor(&npy::<f32>("optim_grads.npy"));
    let lrs = [0.0, 0.01, 0.02, 0.03];
    for (name, kind) in
        [("sgd", OptimizerKind::Sgd), ("adamw", OptimizerKind::Adamw), ("radam", OptimizerKind::Radam)]
    {
        let p = Tensor::from_slice(p0.as_slice().unwrap()).set_requires_grad(true);
        let mut opt = Optimizer::new(kind, vec![p.shallow_clone()], 1e-4);
        for (i, lr) in lrs.iter().enumerate() {
            opt.zero_grad();
            // d/dp sum(p * g) = g: sets exactly the fixture gradient
            (&p * grads.get(i as i64)).sum(Kind::Float).backward();
            opt.step(*lr);
        }
        let want = to_tensor(&npy::<f32>(&format!("optim_{name}.npy")));
        let diff = (&p.detach() - want).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{name}: max abs diff {diff}");
    }
}
