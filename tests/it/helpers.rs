//! Shared test set-up: the project binary, the Python reference interpreter, temp dirs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Repository root (where Cargo.toml lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter with torch 2.11 and cellpose 3.1.1.2 (made by scripts/setup.sh).
pub fn python() -> PathBuf {
    std::env::var_os("CPW_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// Runs a Python snippet with the reference interpreter; panics with its stderr when it fails.
pub fn run_python(code: &str, args: &[&str]) -> String {
    run_python_env(code, args, &[])
}

/// [`run_python`] with extra environment variables (e.g. `OMP_NUM_THREADS=1`).
pub fn run_python_env<A: AsRef<std::ffi::OsStr>>(code: &str, args: &[A], env: &[(&str, &str)]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .env("PYTHONWARNINGS", "ignore")
        .envs(env.iter().copied())
        .output()
        .expect("failed to start the reference Python (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The project's binary, built by cargo for this test run.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cellpose-train-worker"))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// The `pip --target` folder with cellpose 4.2.1.1 and segment-anything (scripts/setup.sh);
/// `CPW_CP4_PATH` overrides it.
pub fn cp4_path() -> PathBuf {
    std::env::var_os("CPW_CP4_PATH").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv-cp4"))
}

/// Runs `tools/cpsam_ref.py` with the reference interpreter and cellpose 4 first on PYTHONPATH;
/// panics with its stderr when it fails. Fails loudly, never skips, when .venv-cp4 is missing.
pub fn run_cp4_tool<A: AsRef<std::ffi::OsStr>>(args: &[A]) -> String {
    let cp4 = cp4_path();
    assert!(
        cp4.join("cellpose").join("vit.py").is_file(),
        "{} has no cellpose 4 (run scripts/setup.sh)",
        cp4.display()
    );
    let out = Command::new(python())
        .arg(repo_root().join("tools/cpsam_ref.py"))
        .args(args)
        .env("PYTHONPATH", &cp4)
        .env("PYTHONWARNINGS", "ignore")
        .env("OMP_NUM_THREADS", "2")
        .output()
        .expect("failed to start the reference Python (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "cellpose 4 reference failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
