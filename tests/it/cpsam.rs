//! Cellpose-SAM (cpsam) against cellpose 4.2.1.1: the network on tiny configurations (fixtures
//! made by `tools/cpsam_ref.py tiny`), files both ways, family errors, masks and AP end to end,
//! and the full ViT-L shape (file made by Python in the test, not committed).

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{read_npy, write_npy};
use tch::{Device, Kind, Tensor};

use cellpose_train_worker::model::{torch_file, CpsamModel, Model, ModelError, ModelFamily};

use crate::helpers::{bin, fixture, run_cp4_tool, tempdir};

fn tensor_to_npy(t: &Tensor, path: &Path) {
    let t = t.to_kind(Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let v = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    write_npy(path, &ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap()).unwrap();
}

fn npy_to_tensor(path: &Path) -> Tensor {
    let a: ArrayD<f32> = read_npy(path).unwrap();
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(a.as_slice().unwrap()).view(shape.as_slice())
}

/// (max |a - b|, max |a - b| / max |b|)
fn diffs(ours: &Tensor, reference: &Tensor) -> (f64, f64) {
    assert_eq!(ours.size(), reference.size());
    let abs = (ours - reference).abs().max().double_value(&[]);
    (abs, abs / reference.abs().max().double_value(&[]))
}

#[test]
fn cpsam_tiny_network_matches_cellpose4() {
    let dir = tempdir();
    let model = CpsamModel::load(&fixture("cpsam/tiny.pth"), Device::Cpu).unwrap();
    let c = &model.net.config;
    assert_eq!((c.dim, c.depth(), c.heads(), c.neck, c.ps, c.bsize()), (64, 2, 2, 32, 8, 256));
    // block 0 was windowed (27-row tables), block 1 global (127 rows): both get interpolated
    assert_eq!((c.blocks[0].rel_len, c.blocks[1].rel_len), ((27, 27), (127, 127)));
    tch::manual_seed(11);
    let x3 = Tensor::randn([2, 3, 256, 256], (Kind::Float, Device::Cpu));
    let x2 = Tensor::randn([1, 2, 256, 256], (Kind::Float, Device::Cpu)); // fewer channels: weight[:, :2]
    let p = |n: &str| dir.path().join(n);
    tensor_to_npy(&x3, &p("x3.npy"));
    tensor_to_npy(&x2, &p("x2.npy"));
    let tiny = fixture("cpsam/tiny.pth");
    let arg = |q: &Path| q.to_str().unwrap().to_string();
    run_cp4_tool(&[
        "forward".to_string(),
        arg(&tiny),
        arg(&p("x3.npy")),
        arg(&p("y3.npy")),
        arg(&p("x2.npy")),
        arg(&p("y2.npy")),
    ]);
    for (x, y) in [(&x3, "y3.npy"), (&x2, "y2.npy")] {
        let ours = tch::no_grad(|| model.net.forward_t(x, false)).unwrap();
        let reference = npy_to_tensor(&p(y));
        let (abs, rel) = diffs(&ours, &reference);
        eprintln!("cpsam tiny forward {:?}: max abs diff {abs:.3e}, rel {rel:.3e}", x.size());
        assert!(rel <= 1e-5, "tiny network differs from cellpose 4: abs {abs:e}, rel {rel:e}");
    }
}

#[test]
fn cpsam_module_prefix_and_bf16_tensors_load_the_same_weights() {
    let dir = tempdir();
    let src = fixture("cpsam/tiny.pth");
    let metas = torch_file::read_tensor_metas(&src).unwrap();
    assert!(metas.iter().any(|m| m.dtype == torch_file::DType::BF16), "fixture should hold bf16 tensors");
    let mut sd = torch_file::read_state_dict(&src).unwrap();
    for (name, _) in sd.entries.iter_mut() {
        *name = format!("module.{name}");
    }
    let prefixed = dir.path().join("prefixed.pth");
    torch_file::write_state_dict(&prefixed, &sd).unwrap();
    let a = CpsamModel::load(&src, Device::Cpu).unwrap();
    let b = CpsamModel::load(&prefixed, Device::Cpu).unwrap();
    let x = Tensor::randn([1, 3, 256, 256], (Kind::Float, Device::Cpu));
    let (ya, yb) =
        tch::no_grad(|| (a.net.forward_t(&x, false).unwrap(), b.net.forward_t(&x, false).unwrap()));
    assert!(ya.allclose(&yb, 0.0, 0.0, false));
    assert_eq!(ModelFamily::detect(&prefixed).unwrap(), ModelFamily::Cpsam);
}

#[test]
fn cpsam_file_written_here_loads_in_cellpose4() {
    let dir = tempdir();
    let model = CpsamModel::load(&fixture("cpsam/tiny.pth"), Device::Cpu).unwrap();
    let out = dir.path().join("written_here.pth");
    model.save(&out).unwrap();
    // CellposeModel(pretrained_model=out) and CPSAM().load_model(out) hold exactly these tensors,
    // in CPSAM().state_dict()'s key order
    let printed = run_cp4_tool(&["check", out.to_str().unwrap()]);
    let n: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(n.first().copied(), Some("42"), "{printed}");
    let back = CpsamModel::load(&out, Device::Cpu).unwrap();
    let x = Tensor::randn([1, 3, 256, 256], (Kind::Float, Device::Cpu));
    let (a, b) =
        tch::no_grad(|| (model.net.forward_t(&x, false).unwrap(), back.net.forward_t(&x, false).unwrap()));
    assert!(a.allclose(&b, 0.0, 0.0, false));
}

#[test]
fn cpsam_wrong_family_errors_name_the_file_and_the_family() {
    let dir = tempdir();
    let cpnet = dir.path().join("cpnet.pth");
    let status = bin().args(["model", "init", "--out", cpnet.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    assert_eq!(ModelFamily::detect(&cpnet).unwrap(), ModelFamily::Cpnet);
    let err = CpsamModel::load(&cpnet, Device::Cpu).err().expect("a CPnet is not a cpsam model");
    assert!(matches!(err, ModelError::WrongFamily { found: Some(ModelFamily::Cpnet), .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(cpnet.to_str().unwrap()) && msg.contains("cellpose 3 CPnet"), "{msg}");
    let cpsam = fixture("cpsam/tiny.pth");
    let msg = Model::load(&cpsam, Device::Cpu).err().expect("a cpsam file is not a CPnet").to_string();
    assert!(msg.contains(cpsam.to_str().unwrap()) && msg.contains("Cellpose-SAM"), "{msg}");
    // through the CLI: training a CPnet from a cpsam file fails before any work
    let out = bin().args(["model", "inspect", cpsam.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("family:      cpsam"));
}

/// Test image: two smooth, noisy channels, 300x410 (two tiles down, two across at 256).
pub(crate) fn test_image() -> ndarray::Array3<f32> {
    ndarray::Array3::from_shape_fn((2, 300, 410), |(c, y, x)| {
        let (fy, fx) = (y as f32, x as f32);
        let noise = (((y * 7919 + x * 104729 + c * 31) % 997) as f32 / 997.0 - 0.5) * 10.0;
        if c == 0 {
            (fy / 9.0).sin() * (fx / 13.0).cos() * 100.0 + 200.0 + noise
        } else {
            ((x + y) % 37) as f32 * 3.0
        }
    })
}

#[test]
fn cpsam_masks_and_ap_match_cellpose4() {
    let dir = tempdir();
    let model = fixture("cpsam/tiny_cells.pth");
    let img = test_image();
    let npy = dir.path().join("img.npy");
    write_npy(&npy, &img).unwrap();
    let tif = dir.path().join("img.tif");
    cellpose_train_worker::imageio::write_tiff_f32(&tif, &img).unwrap();
    let refs = dir.path().join("ref");
    run_cp4_tool(&[
        "eval",
        model.to_str().unwrap(),
        npy.to_str().unwrap(),
        refs.to_str().unwrap(),
        "--channel-axis",
        "0",
        "--diameter",
        "0",
        "20",
    ]);
    for (i, diameter) in ["0", "20"].iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        let st = bin()
            .args([
                "segment",
                "--image",
                tif.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--save-flows",
            ])
            .args(["--model", model.to_str().unwrap(), "--diameter", diameter, "--device", "cpu"])
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        let ours = cellpose_train_worker::imageio::read_labels(&out.join("img_masks.tif")).unwrap();
        let flows = cellpose_train_worker::imageio::read_image(&out.join("img_flows.tif")).unwrap();
        let refp = |what: &str| dir.path().join(format!("ref_{what}{i}.npy"));
        let ref_masks: ndarray::Array2<u32> = read_npy(refp("masks")).unwrap();
        let ref_dp: ndarray::Array3<f32> = read_npy(refp("dp")).unwrap();
        let ref_cp: ndarray::Array2<f32> = read_npy(refp("cellprob")).unwrap();
        let dmax = |a: f32, b: f32| a.max(b);
        let dp_diff = flows
            .slice(ndarray::s![0..2, .., ..])
            .iter()
            .zip(ref_dp.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, dmax);
        let cp_diff = flows
            .index_axis(ndarray::Axis(0), 2)
            .iter()
            .zip(ref_cp.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, dmax);
        let ref_n = ref_masks.iter().copied().max().unwrap_or(0);
        let our_n = ours.iter().copied().max().unwrap_or(0);
        let same = ours.iter().zip(ref_masks.iter()).filter(|(a, b)| (**a > 0) == (**b > 0)).count();
        let ap = cellpose_train_worker::evaluate::score_masks_cp4("img", &ref_masks, &ours).unwrap();
        eprintln!(
            "cpsam masks (diameter {diameter}): flows max abs diff {dp_diff:.2e}, cellprob {cp_diff:.2e}, \
             masks ours {our_n} / cellpose 4 {ref_n}, AP@0.5/0.75/0.9 ours vs ref {:?}, foreground agreement {:.5}",
            ap.ap,
            same as f64 / ours.len() as f64
        );
        assert!(ref_n > 500, "the fixture should give many masks ({ref_n})");
        assert!(dp_diff < 1e-3 && cp_diff < 1e-3, "flows differ: {dp_diff} {cp_diff}");
        // measured: identical masks at both scales; a few pixels may flip on another CPU
        assert!(our_n.abs_diff(ref_n) <= ref_n / 200, "mask counts {our_n} vs {ref_n}");
        assert!(same as f64 / ours.len() as f64 >= 0.999, "foreground agreement {same}");
        assert!(ap.ap[0] >= 0.995 && ap.ap[2] >= 0.99, "AP of our masks against cellpose 4's: {:?}", ap.ap);
    }
}

#[test]
fn cpsam_ap_matches_cellpose4_metrics() {
    let dir = tempdir();
    let truth = ndarray::Array2::<u32>::from_shape_fn((64, 80), |(y, x)| ((y / 16) * 5 + x / 16 + 1) as u32);
    let pred = ndarray::Array2::<u32>::from_shape_fn((64, 80), |(y, x)| {
        let (yy, xx) = (y.saturating_sub(3), x.saturating_sub((y / 16) % 2 * 6));
        if (yy / 16 + xx / 16) % 4 == 3 {
            0
        } else {
            ((yy / 16) * 5 + xx / 16 + 1) as u32 * 3 // gaps in the label values
        }
    });
    write_npy(dir.path().join("t.npy"), &truth).unwrap();
    write_npy(dir.path().join("p.npy"), &pred).unwrap();
    let printed = run_cp4_tool(&[
        "ap",
        dir.path().join("t.npy").to_str().unwrap(),
        dir.path().join("p.npy").to_str().unwrap(),
    ]);
    let vals: Vec<f64> = printed.split_whitespace().take(3).map(|v| v.parse().unwrap()).collect();
    // the truth has no background: cellpose 4 counts unique values - 1 (one object short)
    let ours = cellpose_train_worker::evaluate::score_masks_cp4("x", &truth, &pred).unwrap();
    eprintln!("cpsam AP ours {:?} vs cellpose 4 {vals:?}", ours.ap);
    for (a, b) in ours.ap.iter().zip(&vals) {
        assert!((a - b).abs() < 1e-6, "AP {:?} vs cellpose 4 {vals:?}", ours.ap);
    }
}

/// The full ViT-L shape: random-initialised by cellpose 4 in Python (`CPSAM().save_model`, ~1.2
/// GB in a temp dir), loaded here, one 256x256 forward on both sides.
#[test]
fn cpsam_full_vit_l_file_loads_and_matches_cellpose4() {
    let dir = tempdir();
    let file = dir.path().join("cpsam_vitl.pth");
    tch::manual_seed(5);
    let x = Tensor::rand([1, 3, 256, 256], (Kind::Float, Device::Cpu));
    let xin = dir.path().join("x.npy");
    let yref = dir.path().join("y.npy");
    tensor_to_npy(&x, &xin);
    let printed = run_cp4_tool(&[
        "vitl",
        file.to_str().unwrap(),
        "--forward",
        xin.to_str().unwrap(),
        yref.to_str().unwrap(),
    ]);
    assert!(printed.starts_with("304"), "parameter count: {printed}");
    let model = CpsamModel::load(&file, Device::Cpu).unwrap();
    assert_eq!(model.vs.variables().len(), 350);
    assert_eq!(model.net.config, cellpose_train_worker::model::CpsamConfig::default());
    let ours = tch::no_grad(|| model.net.forward_t(&x, false)).unwrap();
    let (abs, rel) = diffs(&ours, &npy_to_tensor(&yref));
    eprintln!("cpsam ViT-L forward 256x256: max abs diff {abs:.3e}, rel {rel:.3e}");
    assert!(rel <= 1e-3, "ViT-L output differs from cellpose 4: abs {abs:e}, rel {rel:e}");
}
