//! Flows -> masks (`compute_masks`) and labels -> flows (`labels_to_flows`): this crate against
//! Python cellpose 3.1.1.2 on the same arrays, timed in one run, both sides and the ratio.
//!
//! `cargo bench --bench dynamics` (needs .venv from scripts/setup.sh). Environment:
//! `CPW_BENCH_SIZE` image side (default 512), `CPW_BENCH_DEVICE` cpu (default) or cuda,
//! `CPW_BENCH_REPEAT` timed runs per side (default 3; the median is reported, after one warm-up
//! run that also compiles cellpose's numba functions).
#[path = "../tests/it/npy.rs"]
mod npy;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use cellpose_train_worker::segment::{self, MaskParams};
use cellpose_train_worker::train::flows;
use ndarray::{Ix2, Ix3};

const PYTHON: &str = r#"
import json, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import make_dynamics_fixtures as fx
from cellpose import dynamics
out, size, device, repeat = sys.argv[2], int(sys.argv[3]), torch.device(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(11)
lab = fx.voronoi_cells((size, size), size * size // 300, 10.0, rng)
dp, cp = fx.synth_outputs(lab, rng, 0.8, 1.0)
np.save(f"{out}/labels.npy", lab.astype(np.uint32))
np.save(f"{out}/dp.npy", dp)
np.save(f"{out}/cellprob.npy", cp)
def timed(f):
    f()
    ts = []
    for _ in range(repeat):
        if device.type == "cuda": torch.cuda.synchronize()
        t = time.perf_counter(); r = f()
        if device.type == "cuda": torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2], r
tm, m = timed(lambda: dynamics.resize_and_compute_masks(dp, cp, niter=200, device=device))
tf, _ = timed(lambda: dynamics.labels_to_flows([lab.copy()], device=device))
print(json.dumps({"masks_s": tm, "flows_s": tf, "n_masks": int(m.max()), "n_labels": int(lab.max()),
                  "torch_threads": torch.get_num_threads()}))
"#;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median_secs(repeat: usize, device: tch::Device, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..repeat)
        .map(|_| {
            let t = Instant::now();
            f();
            if let tch::Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let size: usize = env_or("CPW_BENCH_SIZE", 512);
    let repeat: usize = env_or("CPW_BENCH_REPEAT", 3).max(1);
    let device_name: String = env_or("CPW_BENCH_DEVICE", "cpu".to_string());
    let device = match device_name.as_str() {
        "cuda" => tch::Device::Cuda(0),
        _ => tch::Device::Cpu,
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python =
        std::env::var_os("CPW_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"));
    let dir = tempfile::tempdir()?;
    let out = Command::new(&python)
        .arg("-c")
        .arg(PYTHON)
        .arg(root.join("tools"))
        .arg(dir.path())
        .args([size.to_string(), device_name.clone(), repeat.to_string()])
        .env("PYTHONWARNINGS", "ignore")
        .output()?;
    anyhow::ensure!(out.status.success(), "python side failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let py: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;

    let read = |name: &str| -> PathBuf { dir.path().join(name) };
    let labels = npy::read_u32(&read("labels.npy")).into_dimensionality::<Ix2>()?;
    let dp = npy::read_f32(&read("dp.npy")).into_dimensionality::<Ix3>()?;
    let cellprob = npy::read_f32(&read("cellprob.npy")).into_dimensionality::<Ix2>()?;
    let params = MaskParams::default();
    let mut n_masks = 0;
    let rust_masks = median_secs(repeat, device, || {
        let m = segment::compute_masks(dp.view(), cellprob.view(), &params, device);
        n_masks = m.map(|m| m.iter().copied().max().unwrap_or(0)).unwrap_or(0);
    });
    let rust_flows = median_secs(repeat, device, || {
        let _ = flows::labels_to_flows(labels.view(), None, device);
    });

    let f = |k: &str| py[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "dynamics bench: {size}x{size}, {} labels, device {device_name}, median of {repeat}; rayon threads {}, \
         cellpose torch threads {}",
        f("n_labels"),
        rayon::current_num_threads(),
        f("torch_threads")
    );
    println!("{:<28} {:>12} {:>12} {:>10}", "", "cellpose (s)", "rust (s)", "speed-up");
    for (name, py_s, rs) in
        [("flows -> masks", f("masks_s"), rust_masks), ("labels -> flows", f("flows_s"), rust_flows)]
    {
        println!("{name:<28} {py_s:>12.4} {rs:>12.4} {:>9.2}x", py_s / rs);
    }
    println!("masks found: cellpose {}, rust {n_masks}", f("n_masks"));
    Ok(())
}
