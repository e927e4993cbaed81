#!/usr/bin/env bash
# Cellpose-SAM training speed, this project vs Python cellpose 4.2.1.1 train_seg, one run: the tiny
# CPSAM fixture (width 64, 2 blocks, 256x256 tiles), the same synthetic images, batch 1, AdamW,
# fp32, the same device and thread count. Both figures are steady-state seconds per step (epoch 0
# excluded), augmentation included.
# Usage: bench/cpsam_train.sh [epochs] [n_images]
# Env: BIN (our binary, default target/release/cellpose-train-worker), PY (python with torch),
#      CP4 (cellpose 4 folder for PYTHONPATH, default .venv-cp4), MODEL (default the tiny fixture).
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-4}; NIMG=${2:-4}
BIN=${BIN:-target/release/cellpose-train-worker}
PY=${PY:-.venv/bin/python}; CP4=${CP4:-.venv-cp4}
MODEL=${MODEL:-tests/fixtures/cpsam/tiny.pth}
THREADS=${OMP_NUM_THREADS:-2}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$BIN" synth --out "$work/data" --n "$NIMG" --size 128 --cells 10 >/dev/null 2>&1
PYTHONPATH="$CP4" "$PY" - "$work/data" "$work" <<'PYEOF'
import sys, glob, numpy as np, tifffile
d, w = sys.argv[1], sys.argv[2]
imgs = sorted(f for f in glob.glob(d + "/*.tif") if not f.endswith("_masks.tif"))
np.save(w + "/imgs.npy", np.stack([tifffile.imread(f).astype(np.float32) for f in imgs]))
np.save(w + "/labels.npy", np.stack([tifffile.imread(f[:-4] + "_masks.tif").astype(np.int32) for f in imgs]))
PYEOF
echo "cpsam training benchmark: $MODEL, epochs=$EPOCHS images=$NIMG batch=1 bsize=256 threads=$THREADS (CPU)"
OMP_NUM_THREADS=$THREADS PYTHONWARNINGS=ignore PYTHONPATH="$CP4" "$PY" tools/cpsam_train_ref.py train "$MODEL" \
  "$work/imgs.npy" "$work/labels.npy" "$work" --n-epochs "$EPOCHS" --lr 1e-4 --timing >"$work/py.json" 2>"$work/py.log" \
  || { cat "$work/py.log"; exit 1; }
OMP_NUM_THREADS=$THREADS RUST_LOG=warn "$BIN" train --dir "$work/data" --pretrained-model "$MODEL" --n-epochs "$EPOCHS" \
  --device cpu --min-train-masks 1 --learning-rate 1e-4 --model-name bench --summary-json "$work/rs.json" \
  2>"$work/rs.log" || { cat "$work/rs.log"; exit 1; }
"$PY" - "$work/py.json" "$work/rs.json" <<'PYEOF'
import json, sys
py = json.load(open(sys.argv[1])); rs = json.load(open(sys.argv[2]))
p = py["steady_step_seconds"]; r = rs["outcome"]["steady_step_seconds"]
print(f"python cellpose 4.2.1.1: {p:.4f} s/step (torch threads {py['torch_threads']}, loss {py['train_losses'][0]:.3f} -> {py['train_losses'][-1]:.3f})")
print(f"this project:            {r:.4f} s/step ({rs['device']}, loss {rs['outcome']['train_losses'][0]:.3f} -> {rs['outcome']['train_losses'][-1]:.3f})")
print(f"ratio (ours / python): {r / p:.3f}")
PYEOF
