//! `predict` against Python cellpose 3.1.1.2's `CellposeModel.eval(..., compute_masks=False)`.

use crate::helpers::{bin, run_python, tempdir};

/// Python side: a CPnet with random weights and BN statistics, a structured 2-channel uint16 image
/// (blobs + noise, so percentiles and tiling matter), and cellpose's flows for it.
const REFERENCE: &str = r#"
import sys, numpy as np, torch, tifffile
from cellpose.resnet_torch import CPnet
from cellpose import models
d = sys.argv[1]; diameter = float(sys.argv[2]); H, W = int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
net = CPnet([2, 32, 64, 128, 256], 3, 3, diam_mean=30.)
with torch.no_grad():
    for name, b in net.named_buffers():
        if name.endswith('running_mean'): b.copy_(torch.randn_like(b) * 0.1)
        if name.endswith('running_var'): b.copy_(torch.rand_like(b) + 0.5)
    net.diam_labels.fill_(25.0)
net.save_model(d + '/model.pth')
rng = np.random.default_rng(3)
yy, xx = np.mgrid[:H, :W]
img = np.zeros((2, H, W), np.float32)
for _ in range(40):
    cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(5, 15)
    img[0] += 3000 * np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * r * r))
    img[1] += 1500 * np.exp(-((yy - cy)**2 + (xx - cx)**2) / (0.5 * r * r))
img += rng.normal(500, 50, img.shape)
img = np.clip(img, 0, 65535).astype(np.uint16)
tifffile.imwrite(d + '/img.tif', img)
m = models.CellposeModel(pretrained_model=d + '/model.pth', gpu=False)
_, flows, _ = m.eval(tifffile.imread(d + '/img.tif'), channels=[1, 2], diameter=diameter or None, compute_masks=False)
ref = np.concatenate([flows[1], flows[2][None]], 0).astype(np.float32)
np.save(d + '/ref.npy', ref)
ours = tifffile.imread(sys.argv[5]) if len(sys.argv) > 5 else None
"#;

const COMPARE: &str = r#"
import sys, numpy as np, tifffile
ref = np.load(sys.argv[1] + '/ref.npy'); ours = tifffile.imread(sys.argv[1] + '/ours.tif')
assert ours.shape == ref.shape and ours.dtype == np.float32, (ours.shape, ref.shape, ours.dtype)
scale = np.abs(ref).max()
print(f"{np.abs(ours - ref).max():.3e} {scale:.3e}")
"#;

/// Runs both sides and returns (max abs diff, max abs reference value).
fn compare(diameter: &str, h: &str, w: &str) -> (f64, f64) {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap();
    run_python(REFERENCE, &[d, diameter, h, w]);
    let out = bin()
        .args([
            "predict",
            "--device",
            "cpu",
            "--chan",
            "1",
            "--chan2",
            "2",
            "--diameter",
            diameter,
            "--model",
        ])
        .arg(dir.path().join("model.pth"))
        .arg("--image")
        .arg(dir.path().join("img.tif"))
        .arg("--out")
        .arg(dir.path().join("ours.tif"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = run_python(COMPARE, &[d]);
    let v: Vec<f64> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0], v[1])
}

/// Tolerance: cellpose on CPU runs the network through MKL-DNN, we run libtorch's default
/// kernels; float32 convolutions summed in a different order differ by ~1e-6 relative per layer,
/// and the ~40 conv layers of CPnet plus bilinear resizing compound that to ~1e-5 relative. We
/// require max |ours - python| <= 1e-4 * max |python| + 1e-5 on flows and cellprob alike.
fn assert_close((diff, scale): (f64, f64)) {
    eprintln!("predict vs cellpose: max abs diff {diff:e}, reference max {scale:e}");
    assert!(diff <= 1e-4 * scale + 1e-5, "max abs diff {diff:e} vs reference scale {scale:e}");
}

#[test]
fn predict_matches_cellpose_single_tile_no_resize() {
    // diameter 30 == diam_mean: no resize; 150x170 fits one tile after padding
    assert_close(compare("30", "150", "170"));
}

#[test]
fn predict_matches_cellpose_tiled_and_resized() {
    // diameter 20: resized by 1.5 to 390x435, several overlapping tiles blended, resized back
    assert_close(compare("20", "260", "290"));
}

#[test]
fn predict_uses_diam_labels_when_no_diameter_given() {
    // diameter 0 -> rescale diam_mean/diam_labels = 30/25
    assert_close(compare("0", "200", "180"));
}
