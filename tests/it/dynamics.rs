//! Golden tests of labels -> flows and flows -> masks against Python cellpose 3.1.1.2
//! (fixtures made by tools/make_dynamics_fixtures.py).

use std::collections::HashMap;

use cellpose_train_worker::segment::{self, Integrator, MaskParams};
use cellpose_train_worker::train::{diameters, flows, flows_torch};
use ndarray::{s, Array2, Array3, Axis, Ix2, Ix3};
use tch::Device;

use crate::helpers::fixture;
use crate::npy;

const FLOW_CASES: [&str; 4] = ["shapes", "cells", "dense", "empty"];
const MASK_CASES: [&str; 5] = ["small", "noisy", "wide", "resized", "noflowcheck"];

fn labels(name: &str) -> Array2<u32> {
    npy::read_u32(&fixture(&format!("dynamics/{name}.npy"))).into_dimensionality::<Ix2>().expect("2-D labels")
}

fn floats3(name: &str) -> Array3<f32> {
    npy::read_f32(&fixture(&format!("dynamics/{name}.npy"))).into_dimensionality::<Ix3>().expect("3-D array")
}

fn floats2(name: &str) -> Array2<f32> {
    npy::read_f32(&fixture(&format!("dynamics/{name}.npy"))).into_dimensionality::<Ix2>().expect("2-D array")
}

fn json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(&format!("dynamics/{name}"))).expect("fixture json");
    serde_json::from_str(&text).expect("valid json")
}

fn max_abs_diff<'a>(a: impl IntoIterator<Item = &'a f32>, b: impl IntoIterator<Item = &'a f32>) -> f32 {
    a.into_iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn labels_to_flows_matches_cellpose_cpu() {
    for name in FLOW_CASES {
        let lab = labels(&format!("flows_{name}_labels"));
        let expected = floats3(&format!("flows_{name}_cpu"));
        let ours = flows::labels_to_flows(lab.view(), None, Device::Cpu).expect("cpu flows");
        assert_eq!(ours.dim(), expected.dim(), "{name}: shape");
        // relabelled labels and the cell-probability target are exact
        assert_eq!(ours.slice(s![..2, .., ..]), expected.slice(s![..2, .., ..]), "{name}: labels / cellprob");
        let diff = max_abs_diff(ours.slice(s![2.., .., ..]), expected.slice(s![2.., .., ..]));
        eprintln!("labels_to_flows {name}: max |dY,dX - cellpose| = {diff:e}");
        assert!(diff <= 1e-6, "{name}: flows differ from cellpose by {diff}");
    }
}

#[test]
fn torch_flows_match_cellpose_gpu_algorithm() {
    for name in FLOW_CASES {
        let lab = labels(&format!("flows_{name}_labels"));
        let relabelled = flows::labels_to_flows(lab.view(), None, Device::Cpu).expect("cpu flows");
        let relabelled = relabelled.index_axis(Axis(0), 0).mapv(|v| v as u32);
        let expected = floats3(&format!("flows_{name}_gpu"));
        let ours =
            flows_torch::masks_to_flows_torch(relabelled.view(), None, Device::Cpu).expect("torch flows");
        let ours = ours.mapv(|v| v as f32);
        let diff = max_abs_diff(&ours, &expected);
        eprintln!("masks_to_flows_gpu {name}: max |dY,dX - cellpose| = {diff:e}");
        assert!(diff <= 1e-6, "{name}: torch flows differ from cellpose by {diff}");
    }
}

#[test]
fn batch_flows_equal_single_image_flows() {
    let all: Vec<Array2<u32>> = FLOW_CASES.iter().map(|n| labels(&format!("flows_{n}_labels"))).collect();
    let batch = flows::labels_to_flows_batch(&all, None, Device::Cpu).expect("batch");
    assert_eq!(batch.len(), all.len());
    for (lab, got) in all.iter().zip(&batch) {
        assert_eq!(got, &flows::labels_to_flows(lab.view(), None, Device::Cpu).expect("single"));
    }
}

/// Equal up to a few units in the last place: numpy's `counts**0.5` on integer counts goes
/// through its SIMD pow, which is not always correctly rounded (sqrt(14) comes out 1 ulp high).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs())
}

#[test]
fn diameters_match_cellpose() {
    let expected = json("flows.json");
    for name in FLOW_CASES {
        let lab = labels(&format!("flows_{name}_labels"));
        let e = &expected[name];
        let d = diameters::diameters(lab.view());
        let per: Vec<f64> =
            e["per_mask"].as_array().expect("list").iter().map(|v| v.as_f64().expect("f64")).collect();
        assert_eq!(d.per_mask.len(), per.len(), "{name}: mask count");
        for (k, (&o, &w)) in d.per_mask.iter().zip(&per).enumerate() {
            assert!(close(o, w), "{name}: sqrt(area) of mask {k}: {o} vs cellpose {w}");
        }
        let want = e["median"].as_f64().expect("median");
        assert!(close(d.median, want), "{name}: median {} vs cellpose {want}", d.median);
        // train_seg computes it from channel 0 of the flows (renumbered labels)
        let f = flows::labels_to_flows(lab.view(), None, Device::Cpu).expect("flows");
        let relabelled = f.index_axis(Axis(0), 0).mapv(|v| v as u32);
        let m = diameters::diameters(relabelled.view()).median;
        let want = e["median_relabelled"].as_f64().expect("median");
        assert!(close(m, want), "{name}: median of relabelled {m} vs cellpose {want}");
    }
}

/// Network-like outputs and parameters of one masks fixture.
struct MaskCase {
    dp: Array3<f32>,
    cellprob: Array2<f32>,
    params: MaskParams,
}

fn mask_case(name: &str) -> MaskCase {
    let all = json("masks.json");
    let p = &all[name];
    let f = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
    let resize = p["resize"].as_array().map(|r| {
        let v: Vec<usize> = r.iter().map(|x| x.as_u64().expect("size") as usize).collect();
        (v[0], v[1])
    });
    MaskCase {
        dp: floats3(&format!("masks_{name}_dp")),
        cellprob: floats2(&format!("masks_{name}_cellprob")),
        params: MaskParams {
            niter: f("niter") as u32,
            cellprob_threshold: f("cellprob_threshold") as f32,
            flow_threshold: f("flow_threshold"),
            min_size: f("min_size") as i64,
            max_size_fraction: f("max_size_fraction"),
            resize,
        },
    }
}

/// How two label images agree: for each expected mask, the best IoU with any of ours.
struct Agreement {
    n_expected: usize,
    n_ours: usize,
    matched_95: usize,
    identical_pixels: f64,
}

fn agreement(expected: &Array2<u32>, ours: &Array2<u32>) -> Agreement {
    let mut area_e: HashMap<u32, u64> = HashMap::new();
    let mut area_o: HashMap<u32, u64> = HashMap::new();
    let mut shared: HashMap<(u32, u32), u64> = HashMap::new();
    let mut same = 0usize;
    for (&e, &o) in expected.iter().zip(ours.iter()) {
        *area_e.entry(e).or_default() += 1;
        *area_o.entry(o).or_default() += 1;
        if e > 0 && o > 0 {
            *shared.entry((e, o)).or_default() += 1;
        }
        same += usize::from(e == o);
    }
    let matched_95 = area_e
        .iter()
        .filter(|(&e, _)| e > 0)
        .filter(|(&e, &ae)| {
            shared
                .iter()
                .filter(|((a, _), _)| *a == e)
                .any(|((_, o), &s)| s as f64 / (ae + area_o[o] - s) as f64 >= 0.95)
        })
        .count();
    Agreement {
        n_expected: area_e.keys().filter(|&&l| l > 0).count(),
        n_ours: area_o.keys().filter(|&&l| l > 0).count(),
        matched_95,
        identical_pixels: same as f64 / expected.len() as f64,
    }
}

fn check_masks(name: &str, variant: &str, integrator: Integrator) {
    let case = mask_case(name);
    let expected = labels(&format!("masks_{name}_{variant}"));
    let ours = segment::compute_masks_with(
        case.dp.view(),
        case.cellprob.view(),
        &case.params,
        integrator,
        Device::Cpu,
    )
    .expect("masks");
    assert_eq!(ours.dim(), expected.dim(), "{name}/{variant}: shape");
    let a = agreement(&expected, &ours);
    eprintln!(
        "masks {name}/{variant}: cellpose {} masks, ours {}, IoU>=0.95 for {}/{}, identical pixels {:.4}%",
        a.n_expected,
        a.n_ours,
        a.matched_95,
        a.n_expected,
        100.0 * a.identical_pixels
    );
    assert!(a.n_expected > 0, "{name}: the fixture should hold masks");
    assert!(
        a.n_ours.abs_diff(a.n_expected) <= 1,
        "{name}/{variant}: {} masks vs cellpose's {}",
        a.n_ours,
        a.n_expected
    );
    assert!(
        a.matched_95 as f64 >= 0.98 * a.n_expected as f64,
        "{name}/{variant}: only {}/{} masks with IoU >= 0.95",
        a.matched_95,
        a.n_expected
    );
    // stronger than the acceptance bar: the same algorithm in the same precision gives the same
    // labels pixel for pixel
    assert_eq!(ours, expected, "{name}/{variant}: labels differ from cellpose");
}

#[test]
fn compute_masks_matches_cellpose_cpu() {
    for name in MASK_CASES {
        check_masks(name, "cpu", Integrator::Interpolate);
    }
}

#[test]
fn compute_masks_matches_cellpose_grid_sample_branch() {
    for name in MASK_CASES {
        check_masks(name, "torch", Integrator::GridSample);
    }
}

#[test]
fn get_masks_matches_cellpose_before_the_flow_check() {
    for name in MASK_CASES {
        let case = mask_case(name);
        let expected = labels(&format!("masks_{name}_raw"));
        let inside = case.cellprob.mapv(|p| p > case.params.cellprob_threshold);
        let starts: Vec<(usize, usize)> = inside.indexed_iter().filter(|(_, &m)| m).map(|(i, _)| i).collect();
        let mut field = case.dp.clone();
        for mut plane in field.axis_iter_mut(Axis(0)) {
            plane.zip_mut_with(&inside, |v, &m| *v = if m { *v / 5.0 } else { 0.0 });
        }
        let ends = segment::follow_flows_cpu(field.view(), &starts, case.params.niter);
        let ours =
            segment::get_masks(&ends, &starts, inside.dim(), case.params.max_size_fraction, Device::Cpu)
                .expect("get_masks");
        assert_eq!(ours, expected, "{name}: get_masks differs from cellpose");
    }
}

#[test]
fn no_cell_pixels_give_empty_masks_at_the_requested_size() {
    let dp = Array3::<f32>::zeros((2, 16, 20));
    let cellprob = Array2::<f32>::from_elem((16, 20), -5.0);
    let params = MaskParams { resize: Some((32, 40)), ..MaskParams::default() };
    let m = segment::compute_masks(dp.view(), cellprob.view(), &params, Device::Cpu).expect("masks");
    assert_eq!(m.dim(), (32, 40));
    assert!(m.iter().all(|&v| v == 0));
}

/// cellpose on CUDA vs ours on CUDA, for the committed inputs. Needs a GPU and the outputs of
/// `tools/make_dynamics_fixtures.py --cuda-out DIR` in `CPW_GPU_GOLDEN=DIR`.
#[test]
#[ignore = "needs CUDA and CPW_GPU_GOLDEN (tools/make_dynamics_fixtures.py --cuda-out DIR)"]
fn cuda_matches_cellpose_on_cuda() {
    let dir = std::path::PathBuf::from(std::env::var_os("CPW_GPU_GOLDEN").expect("set CPW_GPU_GOLDEN"));
    assert!(tch::Cuda::is_available(), "no CUDA device");
    let device = Device::Cuda(0);
    for name in FLOW_CASES {
        let lab = labels(&format!("flows_{name}_labels"));
        let expected = npy::read_f32(&dir.join(format!("flows_{name}_cuda.npy")))
            .into_dimensionality::<Ix3>()
            .expect("3-D");
        let ours = flows::labels_to_flows(lab.view(), None, device).expect("cuda flows");
        assert_eq!(ours.slice(s![..2, .., ..]), expected.slice(s![..2, .., ..]), "{name}: labels / cellprob");
        let diff = max_abs_diff(ours.slice(s![2.., .., ..]), expected.slice(s![2.., .., ..]));
        eprintln!("cuda labels_to_flows {name}: max |dY,dX - cellpose| = {diff:e}");
        assert!(diff <= 1e-6, "{name}: cuda flows differ from cellpose's by {diff}");
    }
    for name in MASK_CASES {
        let case = mask_case(name);
        let expected = npy::read_u32(&dir.join(format!("masks_{name}_cuda.npy")))
            .into_dimensionality::<Ix2>()
            .expect("2-D");
        let ours = segment::compute_masks(case.dp.view(), case.cellprob.view(), &case.params, device)
            .expect("masks");
        let a = agreement(&expected, &ours);
        eprintln!(
            "cuda masks {name}: cellpose {} masks, ours {}, IoU>=0.95 for {}/{}, identical pixels {:.4}%",
            a.n_expected,
            a.n_ours,
            a.matched_95,
            a.n_expected,
            100.0 * a.identical_pixels
        );
        assert!(
            a.n_ours.abs_diff(a.n_expected) <= 1,
            "{name}: {} masks vs cellpose's {}",
            a.n_ours,
            a.n_expected
        );
        assert!(a.matched_95 as f64 >= 0.98 * a.n_expected as f64, "{name}: too few masks with IoU >= 0.95");
    }
}
