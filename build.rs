//! Embeds the libtorch directory as an rpath so binaries run without LD_LIBRARY_PATH, and keeps
//! libtorch_cuda linked even though no symbol of it is referenced directly (without it,
//! `tch::Cuda::is_available()` is false on GPU machines because the linker drops the library).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CPW_EXTRA_RPATH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else { return };
    let lib = PathBuf::from(&libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // Deployment images put libtorch elsewhere (see Dockerfile).
    if let Ok(extra) = std::env::var("CPW_EXTRA_RPATH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{extra}");
    }
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
