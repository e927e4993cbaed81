//! Cellpose-SAM predict (network only, `compute_masks=False`) on one image: this crate against
//! Python cellpose 4.2.1.1 with the same random weights, same device, same tile size (256) and
//! batch size (8), timed in one run: both sides and the ratio.
//!
//! `cargo bench --bench cpsam_predict` (needs .venv and .venv-cp4 from scripts/setup.sh).
//! Environment:
//! - `CPW_BENCH_SIZE` image side (default 1024, the issue's figure);
//! - `CPW_BENCH_NET` `vitl` (default: the full ViT-L, `vit.CPSAM()`) or `tiny` (width 64, depth 2,
//!   `tools/cpsam_ref.py tiny`: the tiling, blending and copies around a cheap network);
//! - `CPW_BENCH_DEVICE` cpu (default) or cuda;
//! - `CPW_BENCH_PRECISION` fp32 (default) or bf16 (cellpose 4's default; applied to both).
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use cellpose_train_worker::model::CpsamModel;
use cellpose_train_worker::predict_cpsam::{predict_cp4, Cp4Options};
use tch::{Device, Kind};

/// argv: model image device precision net tools_dir. Writes the weights (random, seed 0) to
/// `model` first, so both sides run the same file.
const PYTHON: &str = r#"
import sys, time
import numpy as np, torch
from cellpose import models, vit
model, image, device, bf16, net, tools = sys.argv[1:7]
device, bf16 = torch.device(device), bf16 == "bf16"
torch.manual_seed(0)
if net == "tiny":
    sys.path.insert(0, tools)
    import cpsam_ref
    torch.save(cpsam_ref.build_tiny().state_dict(), model)
    cpsam_ref.tiny_if(model)
else:
    vit.CPSAM().save_model(model)
m = models.CellposeModel(pretrained_model=model, device=device, use_bfloat16=bf16)
img = np.load(image)
def run():
    if device.type == "cuda": torch.cuda.synchronize()
    t = time.perf_counter()
    m.eval(img, channel_axis=0, compute_masks=False, batch_size=8, bsize=256)
    if device.type == "cuda": torch.cuda.synchronize()
    return time.perf_counter() - t
run() if device.type == "cuda" or net == "tiny" else None  # warm-up (CUDA kernels; cheap for tiny)
print(run())
"#;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let size: usize = env("CPW_BENCH_SIZE", "1024").parse().expect("CPW_BENCH_SIZE: an image side in pixels");
    let net = env("CPW_BENCH_NET", "vitl");
    assert!(net == "vitl" || net == "tiny", "CPW_BENCH_NET: vitl or tiny, not {net}");
    let device_name = env("CPW_BENCH_DEVICE", "cpu");
    let precision = env("CPW_BENCH_PRECISION", "fp32");
    let device = cellpose_train_worker::device::parse_device(&device_name).expect("CPW_BENCH_DEVICE");
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("cpsam_random.pth");
    let image = dir.path().join("img.npy");
    let img = ndarray::Array3::from_shape_fn((3, size, size), |(c, y, x)| {
        ((y as f32 / 17.0).sin() * (x as f32 / 23.0).cos() + c as f32 * 0.1) * 100.0 + 200.0
    });
    ndarray_npy::write_npy(&image, &img).expect("write image");
    let threads = tch::get_num_threads();
    let py = Command::new(root.join(".venv/bin/python"))
        .args(["-c", PYTHON])
        .arg(&model)
        .arg(&image)
        .arg(&device_name)
        .arg(&precision)
        .arg(&net)
        .arg(root.join("tools"))
        .env("PYTHONPATH", root.join(".venv-cp4"))
        .env("PYTHONWARNINGS", "ignore")
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .expect("run the cellpose 4 reference");
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let t_py: f64 =
        String::from_utf8_lossy(&py.stdout).trim().lines().last().and_then(|l| l.parse().ok()).expect("time");

    let mut m = CpsamModel::load(&model, device).expect("load the model");
    if precision == "bf16" {
        m.to_kind(Kind::BFloat16);
    }
    let opts = Cp4Options::default();
    if device.is_cuda() || net == "tiny" {
        let _ = predict_cp4(&m, &img, &opts).expect("warm-up");
    }
    let t = Instant::now();
    let pred = predict_cp4(&m, &img, &opts).expect("predict");
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let t_rs = t.elapsed().as_secs_f64();
    let (_, h, w) = pred.dp.dim();
    println!(
        "cpsam predict ({net}) {h}x{w} on {device_name} ({precision}, tile 256, batch 8, {threads} threads): \
         cellpose 4.2.1.1 {t_py:.2} s, this project {t_rs:.2} s, ratio {:.3}",
        t_rs / t_py
    );
}
