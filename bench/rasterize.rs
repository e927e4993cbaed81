//! Label-mask rasterization: this crate vs the reference worker's Python loop, in one run.
//!
//! 10,000 random cell-sized polygons (radius 10-30 px, fixed seed) on a 2048x2048 frame. The
//! reference (bench/rasterize_reference.py) is NimbusImage's "Cellpose retrain" loop: one
//! full-frame skimage.draw.polygon2mask per annotation and `mask[m] = i + 1`. It costs seconds per
//! thousand polygons, so by default it times the first 500 and extrapolates linearly (printed).
//! Both sides' masks for those polygons are compared pixel for pixel before any figure is printed.
//!
//! Run: `bench/rasterize.sh [--polygons N] [--python-subset N]` (or `cargo bench --bench rasterize -- ...`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use cellpose_train_worker::annotations::{Annotation, Location, Shape};
use cellpose_train_worker::rasterize::{rasterize_labels, Label};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FRAME: (usize, usize) = (2048, 2048);
const SEED: u64 = 7;

/// A star-shaped, slightly irregular outline like a hand-drawn cell: 16-48 vertices at radius
/// 10-30 px with +/-20% jitter, centred anywhere on the frame (some cross its border).
fn random_cells(n: usize) -> Vec<Annotation> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    (0..n)
        .map(|i| {
            let (cx, cy) = (rng.gen_range(0.0..FRAME.1 as f64), rng.gen_range(0.0..FRAME.0 as f64));
            let radius = rng.gen_range(10.0..30.0);
            let k = rng.gen_range(16..=48);
            let points = (0..k)
                .map(|j| {
                    let a = std::f64::consts::TAU * (j as f64 + rng.gen_range(-0.3..0.3)) / k as f64;
                    let r = radius * rng.gen_range(0.8..1.2);
                    (cx + r * a.cos(), cy + r * a.sin())
                })
                .collect();
            Annotation {
                id: format!("cell{i}"),
                shape: Shape::Polygon,
                points,
                tags: vec!["cell".into()],
                channel: 0,
                location: Location::default(),
            }
        })
        .collect()
}

/// Best of `reps` runs (the least disturbed by other processes on a shared machine).
fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.expect("reps >= 1"))
}

fn arg(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .context(name.to_string()),
        None => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--polygons", 10_000)?;
    let subset = arg(&args, "--python-subset", 500)?.min(n);
    ensure!(subset > 0, "--python-subset must be at least 1");
    let cells = random_cells(n);

    let dir = tempfile::tempdir()?;
    let polygons_path = dir.path().join("polygons.json");
    let polygons: Vec<&Vec<(f64, f64)>> = cells.iter().map(|c| &c.points).collect();
    std::fs::write(
        &polygons_path,
        serde_json::to_vec(&serde_json::json!({"frame": FRAME, "polygons": polygons}))?,
    )?;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python =
        std::env::var_os("CPW_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"));
    let npy = dir.path().join("reference.npy");
    let out = Command::new(&python)
        .arg(root.join("bench/rasterize_reference.py"))
        .arg(&polygons_path)
        .arg(subset.to_string())
        .arg(&npy)
        .output()
        .with_context(|| format!("failed to start {}", python.display()))?;
    if !out.status.success() {
        bail!("reference failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("reference output")?;
    let py_seconds = report["seconds"].as_f64().context("reference seconds")?;

    // Correctness first: the same pixels as polygon2mask for the polygons Python drew.
    let reference: Array2<Label> = ndarray_npy::read_npy(&npy)?;
    let (rust_subset, ours) = best_of(3, || rasterize_labels(FRAME, &cells[..subset], (0, 0)));
    let ours = ours?;
    let differing = ours.iter().zip(reference.iter()).filter(|(a, b)| a != b).count();
    ensure!(differing == 0, "{differing} pixels differ from polygon2mask on the first {subset} polygons");

    let (rust_all, all) = best_of(5, || rasterize_labels(FRAME, &cells, (0, 0)));
    let labelled = all?.iter().filter(|&&v| v != 0).count();

    let py_all = py_seconds * n as f64 / subset as f64;
    let rust_all = rust_all.as_secs_f64();
    println!("rasterize {n} cell polygons (radius 10-30 px) on a {}x{} frame", FRAME.0, FRAME.1);
    println!(
        "  masks identical to skimage {} polygon2mask on the first {subset} polygons",
        report["skimage"]
    );
    println!("  labelled pixels (all {n}): {labelled}");
    let how =
        if subset < n { format!("timed {subset}, extrapolated linearly to {n}") } else { "all timed".into() };
    println!(
        "  python (reference loop): {py_seconds:.3} s for {subset} polygons -> {py_all:.2} s for {n} ({how})"
    );
    println!(
        "  rust   (this crate):    {:.4} s for {subset} polygons, {rust_all:.4} s for {n} (best of 5)",
        rust_subset.as_secs_f64()
    );
    println!("  ratio on the {subset} both timed:   {:.0}x", py_seconds / rust_subset.as_secs_f64());
    println!("  ratio for {n}:               {:.0}x (target >= 50x)", py_all / rust_all);
    Ok(())
}
