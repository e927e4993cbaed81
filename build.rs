//! 1. Embeds the libtorch directory as an rpath so binaries run without LD_LIBRARY_PATH.
//! 2. Keeps libtorch_cuda linked although no symbol of it is referenced directly (otherwise
//!    `tch::Cuda::is_available()` is false on GPU machines because the linker drops it).
//! 3. Compiles `csrc/cuda_graph.cpp` (CUDA graph capture for training steps) when the torch install
//!    has CUDA libraries and the CUDA runtime headers pip installs with it; sets `cfg(cpw_cuda_graphs)`.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CPW_EXTRA_RPATH");
    println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
    println!("cargo::rustc-check-cfg=cfg(cpw_cuda_graphs)");
    let Ok(libtorch) = std::env::var("LIBTORCH") else { return };
    let root = PathBuf::from(&libtorch);
    let root = root.canonicalize().unwrap_or(root);
    let lib = root.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // Deployment images put libtorch elsewhere (see Dockerfile).
    if let Ok(extra) = std::env::var("CPW_EXTRA_RPATH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{extra}");
    }
    if !lib.join("libtorch_cuda.so").exists() {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch_cuda");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    if let Some(cuda_include) = find_cuda_include(&root) {
        cc::Build::new()
            .cpp(true)
            .pic(true)
            .warnings(false)
            .include(root.join("include"))
            .include(root.join("include/torch/csrc/api/include"))
            .include(&cuda_include)
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .file("csrc/cuda_graph.cpp")
            .compile("cpw_cuda_graph");
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-cfg=cpw_cuda_graphs");
    } else {
        println!(
            "cargo:warning=CUDA runtime headers not found next to torch: building without CUDA graph capture"
        );
    }
}

/// pip's torch wheel pulls the CUDA runtime (with headers) into site-packages/nvidia/<cuXX>/include.
fn find_cuda_include(torch_root: &Path) -> Option<PathBuf> {
    let nvidia = torch_root.parent()?.join("nvidia");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("include")))
        .chain([nvidia.join("cuda_runtime/include")])
        .filter(|p| p.join("cuda_runtime_api.h").exists())
        .collect();
    candidates.sort();
    candidates.pop()
}
