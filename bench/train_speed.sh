#!/usr/bin/env bash
# Training speed, this project vs Python cellpose 3.1.1.2, same data/network/batch/bsize/device, one run.
# Usage: bench/train_speed.sh [cpu|cuda] [epochs] [n_images] [bsize]
# Env: BIN (our binary, default target/release/cellpose-train-worker), PY (python with cellpose),
#      PRECISION (our --mixed-precision: auto (default, what a user gets), on, off).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}; EPOCHS=${2:-4}; NIMG=${3:-16}; BSIZE=${4:-224}; BATCH=8
BIN=${BIN:-target/release/cellpose-train-worker}
PY=${PY:-.venv/bin/python}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p /tmp/cellpose-bench-py/models
"$BIN" synth --out "$work/data" --n "$NIMG" --size 256 --cells 40 >/dev/null 2>&1
echo "training benchmark: device=$DEVICE epochs=$EPOCHS images=$NIMG batch=$BATCH bsize=$BSIZE"
"$PY" bench/train_speed.py --data "$work/data" --device "$DEVICE" --epochs "$EPOCHS" --batch-size $BATCH --bsize "$BSIZE" --out "$work/py.json" >"$work/py.log" 2>&1 \
  || { cat "$work/py.log"; exit 1; }
RUST_LOG=warn "$BIN" train --dir "$work/data" --pretrained-model None --chan 1 --chan2 2 --n-epochs "$EPOCHS" \
  --batch-size $BATCH --bsize "$BSIZE" --device "$DEVICE" --min-train-masks 1 --learning-rate 0.005 \
  --mixed-precision "${PRECISION:-auto}" \
  --model-name bench --summary-json "$work/rs.json" 2>"$work/rs.log" || { cat "$work/rs.log"; exit 1; }
"$PY" - "$work/py.json" "$work/rs.json" <<'PYEOF'
import json, sys
py = json.load(open(sys.argv[1])); rs = json.load(open(sys.argv[2]))
p = py["steady_step_seconds"]; r = rs["outcome"]["steady_step_seconds"]
print(f"python cellpose: {p:.4f} s/step (torch threads {py['torch_threads']}, loss {py['train_losses'][0]:.3f} -> {py['train_losses'][-1]:.3f})")
print(f"this project:    {r:.4f} s/step ({rs['device']}, precision {rs.get('precision', rs['mixed_precision'])}, loss {rs['outcome']['train_losses'][0]:.3f} -> {rs['outcome']['train_losses'][-1]:.3f})")
print(f"ratio (ours / python): {r / p:.3f}")
PYEOF
