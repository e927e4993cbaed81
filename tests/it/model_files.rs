//! Model files both ways with Python cellpose 3.1.1.2 / torch 2.11 as the reference.

use std::path::Path;

use cellpose_train_worker::model::{torch_file, Model, ModelError};
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use tch::{Device, Tensor};

use crate::helpers::{bin, run_python, tempdir};

/// Python: a CPnet with random weights AND random BatchNorm statistics (so eval mode is not the
/// identity), saved by cellpose's own `save_model`, plus a fixed normalised input and its output.
const MAKE_REFERENCE: &str = r#"
import sys, numpy as np, torch
from cellpose.resnet_torch import CPnet
out = sys.argv[1]; nchan = int(sys.argv[2])
torch.manual_seed(0)
net = CPnet([nchan, 32, 64, 128, 256], 3, 3, diam_mean=30.)
with torch.no_grad():
    for name, b in net.named_buffers():
        if name.endswith('running_mean'): b.copy_(torch.randn_like(b) * 0.1)
        if name.endswith('running_var'): b.copy_(torch.rand_like(b) + 0.5)
        if name.endswith('num_batches_tracked'): b.fill_(7)
    net.diam_labels.fill_(21.5)
net.save_model(out + '/py_model.pth')
rng = np.random.default_rng(1)
x = rng.random((2, nchan, 224, 224), dtype=np.float32)
np.save(out + '/x.npy', x)
net.eval()
with torch.no_grad():
    y, style = net(torch.from_numpy(x))[:2]
np.save(out + '/y.npy', y.numpy()); np.save(out + '/style.npy', style.numpy())
"#;

fn tensor_from(a: &ArrayD<f32>) -> Tensor {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(a.as_slice().expect("contiguous")).view(shape.as_slice())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn python_model_forward_matches_within_1e_4() {
    let dir = tempdir();
    run_python(MAKE_REFERENCE, &[dir.path().to_str().unwrap(), "2"]);
    let model = Model::load(&dir.path().join("py_model.pth"), Device::Cpu).expect("load python model");
    assert_eq!(model.net.config.nbase, vec![2, 32, 64, 128, 256]);
    assert_eq!(model.net.diam_labels(), 21.5);
    let x: ArrayD<f32> = read_npy(dir.path().join("x.npy")).unwrap();
    let y: ArrayD<f32> = read_npy(dir.path().join("y.npy")).unwrap();
    let style: ArrayD<f32> = read_npy(dir.path().join("style.npy")).unwrap();
    let out = tch::no_grad(|| model.net.forward_t(&tensor_from(&x), false)).unwrap();
    let d = max_abs_diff(&out.maps, &tensor_from(&y));
    assert!(d < 1e-4, "forward max abs diff {d}");
    let ds = max_abs_diff(&out.style, &tensor_from(&style));
    assert!(ds < 1e-5, "style max abs diff {ds}");
}

#[test]
fn round_trip_python_here_python_is_bit_identical() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap();
    run_python(MAKE_REFERENCE, &[d, "2"]);
    let model = Model::load(&dir.path().join("py_model.pth"), Device::Cpu).unwrap();
    model.save(&dir.path().join("ours.pth")).unwrap();
    let out = run_python(
        r#"
import sys, torch, numpy as np
a = torch.load(sys.argv[1] + '/py_model.pth', weights_only=True)
b = torch.load(sys.argv[1] + '/ours.pth', weights_only=True)
assert type(b).__name__ == 'OrderedDict', type(b)
assert list(a.keys()) == list(b.keys()), 'key order differs'
bad = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
assert not bad, bad
from cellpose import models
m = models.CellposeModel(pretrained_model=sys.argv[1] + '/ours.pth', gpu=False)
img = np.random.default_rng(0).random((96, 96)).astype(np.float32)
masks = m.eval(img, channels=[0, 0], diameter=30.)[0]
print('ok', len(b), masks.shape, float(m.diam_labels))
"#,
        &[d],
    );
    assert!(out.starts_with("ok 313 (96, 96) 21.5"), "{out}");
}

#[test]
fn model_init_writes_a_file_python_cellpose_loads() {
    let dir = tempdir();
    let f = dir.path().join("fresh.pth");
    let st = bin()
        .args(["model", "init", "--out"])
        .arg(&f)
        .args(["--nchan", "3", "--nbase", "8,16"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = run_python(
        r#"
import sys, torch
from cellpose.resnet_torch import CPnet
sd = torch.load(sys.argv[1], weights_only=True)
net = CPnet([3, 8, 16], 3, 3)
net.load_state_dict(sd, strict=True)  # raises on any missing/unexpected key or shape
print(sd['downsample.down.res_down_0.conv.conv_0.2.weight'].shape[1], sd['output.2.weight'].shape[0], len(sd) == len(net.state_dict()))
"#,
        &[f.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "3 3 True");
}

#[test]
fn model_inspect_json_reports_inferred_shape() {
    let dir = tempdir();
    run_python(MAKE_REFERENCE, &[dir.path().to_str().unwrap(), "3"]);
    let out =
        bin().args(["model", "inspect", "--json"]).arg(dir.path().join("py_model.pth")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nchan"], 3);
    assert_eq!(v["nbase"], serde_json::json!([3, 32, 64, 128, 256]));
    assert_eq!(v["nout"], 3);
    assert_eq!(v["diam_labels"], 21.5);
    assert_eq!(v["tensors"].as_array().unwrap().len(), 313);
}

fn load_err(path: &Path) -> String {
    match Model::load(path, Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_get_errors_that_name_file_and_problem() {
    let dir = tempdir();
    let d = dir.path();
    run_python(MAKE_REFERENCE, &[d.to_str().unwrap(), "2"]);
    let good = std::fs::read(d.join("py_model.pth")).unwrap();

    let not_zip = d.join("notzip.pth");
    std::fs::write(&not_zip, b"<html>502 Bad Gateway</html>").unwrap();
    let e = load_err(&not_zip);
    assert!(e.contains("notzip.pth") && e.contains("not a PyTorch model file"), "{e}");

    let truncated = d.join("truncated.pth");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let e = load_err(&truncated);
    assert!(e.contains("truncated.pth") && (e.contains("damaged or truncated")), "{e}");

    // missing tensor and wrong shape, written by torch itself
    run_python(
        r#"
import sys, torch
sd = torch.load(sys.argv[1] + '/py_model.pth', weights_only=True)
m = dict(sd); del m['upsample.up.res_up_1.proj.1.bias']; torch.save(m, sys.argv[1] + '/missing.pth')
w = dict(sd); w['upsample.up.res_up_1.proj.1.bias'] = torch.zeros(5); torch.save(w, sys.argv[1] + '/shape.pth')
torch.save({'model': sd, 'epoch': 3}, sys.argv[1] + '/checkpoint.pth')
"#,
        &[d.to_str().unwrap()],
    );
    let e = load_err(&d.join("missing.pth"));
    assert!(e.contains("missing.pth") && e.contains("`upsample.up.res_up_1.proj.1.bias` is missing"), "{e}");
    let e = load_err(&d.join("shape.pth"));
    assert!(
        e.contains("shape.pth") && e.contains("upsample.up.res_up_1.proj.1.bias") && e.contains("[5]"),
        "{e}"
    );
    let e = load_err(&d.join("checkpoint.pth"));
    assert!(e.contains("checkpoint.pth") && e.contains("`model`"), "{e}");

    // a pickle that would run code: refused before anything is constructed
    run_python(
        r#"
import sys, os, torch, pickle, collections
class Evil:
    def __reduce__(self): return (os.system, ('echo pwned',))
torch.save(collections.OrderedDict(w=Evil()), sys.argv[1] + '/evil.pth')
"#,
        &[d.to_str().unwrap()],
    );
    let e = load_err(&d.join("evil.pth"));
    assert!(
        e.contains("evil.pth")
            && e.contains("not allowed")
            && (e.contains("posix.system") || e.contains("os.system")),
        "{e}"
    );
}

#[test]
fn three_channel_model_loaded_for_two_channels_says_nchan_differs() {
    let dir = tempdir();
    run_python(MAKE_REFERENCE, &[dir.path().to_str().unwrap(), "3"]);
    let p = dir.path().join("py_model.pth");
    let model = Model::load(&p, Device::Cpu).unwrap();
    let err = model.check_io(2, 3, &p.display().to_string()).unwrap_err();
    assert!(matches!(err, ModelError::ChannelMismatch { model: 3, wanted: 2, .. }));
    let msg = err.to_string();
    assert!(msg.contains("nchan differs") && msg.contains("base model must match"), "{msg}");
}

#[test]
fn state_dict_bytes_survive_our_own_round_trip() {
    let model = Model::new(Default::default(), Device::Cpu).unwrap();
    let sd = model.state_dict();
    let bytes = torch_file::state_dict_to_bytes(&sd).unwrap();
    let back = torch_file::read_state_dict_bytes(&bytes, "memory").unwrap();
    assert_eq!(sd, back);
}
