#!/usr/bin/env bash
# All benchmarks, each printing this project's and the reference's figures from one run and the
# ratio (absolute times alone mean nothing on shared machines). `make bench` runs this.
# Device for the training benchmark: first argument (default: cuda when available, else cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
DEVICE=${1:-$(.venv/bin/python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
echo "== training step time vs Python cellpose ($DEVICE)"
./bench/train_speed.sh "$DEVICE"
echo "== rasterization vs scikit-image polygon2mask"
./bench/rasterize.sh
echo "== flows -> masks vs cellpose"
cargo bench --locked --bench dynamics
