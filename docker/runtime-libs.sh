#!/bin/sh
# Lays the shared libraries the worker binary loads into a staging root, at the same absolute
# paths (the binary's rpath and libtorch's $ORIGIN-relative rpaths point there), so the runtime
# image carries those and nothing else of the 3.7 GB torch + nvidia wheels: no headers, static
# archives, Python bindings (libtorch_python), CUDA tools the binary never opens (nvblas, cufftw,
# cusolverMg, nvperf, the nvrtc ".alt" builds).
#
# What the dynamic linker needs is read with ldd (the binary's whole DT_NEEDED closure). What
# libtorch and cuDNN open later with dlopen is named here, because no linker table lists it:
#   - cuDNN 9's engine sub-libraries (libcudnn_*.so.9), opened by libcudnn.so.9 per operation;
#   - libtorch_cuda_linalg.so, opened by torch on the first CUDA linear-algebra call;
#   - libcaffe2_nvrtc.so + libnvrtc + its builtins, opened for runtime-compiled kernels.
# System libraries (glibc, libstdc++) come from the runtime base image and are not copied.
#
# Usage: runtime-libs.sh BINARY SITE_PACKAGES STAGE_ROOT
set -eu
bin=$1 site=$2 stage=$3

dlopened() {
  ls "$site"/nvidia/cudnn/lib/libcudnn*.so* \
     "$site"/torch/lib/libtorch_cuda_linalg.so \
     "$site"/torch/lib/libcaffe2_nvrtc.so \
     "$site"/nvidia/cu*/lib/libnvrtc.so.* \
     "$site"/nvidia/cu*/lib/libnvrtc-builtins.so.* 2>/dev/null | grep -v '\.alt\.'
}

libs=$( { ldd "$bin"; for f in $(dlopened); do echo "$f"; ldd "$f"; done; } \
  | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^\(\/[^ ]*\)$/\1/p' | grep "^$site/" | sort -u)

# libcuda.so.1 is the GPU driver's: the NVIDIA container runtime mounts the host's into the
# container (some cuDNN/nvrtc libraries link it directly; without a GPU they are never opened).
missing=$( { ldd "$bin"; for f in $(dlopened); do ldd "$f"; done; } | grep 'not found' \
  | grep -v 'libcuda\.so\.1 ' || true)
if [ -n "$missing" ]; then
  echo "runtime-libs: unresolved libraries:" >&2
  echo "$missing" >&2
  exit 1
fi

for f in $libs; do
  mkdir -p "$stage$(dirname "$f")"
  cp -L "$f" "$stage$f"
done
echo "runtime-libs: $(echo "$libs" | wc -l) libraries, $(du -sh "$stage" | cut -f1)" >&2
