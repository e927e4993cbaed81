#!/usr/bin/env bash
# Cellpose-SAM training speed, this project vs Python cellpose 4.2.1.1 train_seg, in one run: the
# same model file, the same synthetic images, batch 1, AdamW, 256x256 tiles, the same device and
# thread count. Three rows: cellpose 4 (float32, as it trains), this project float32, and this
# project bf16 mixed precision (float32 weights and AdamW, bf16 matrix products). Each row gives the
# steady seconds per step (epoch 0 excluded; augmentation included) as a mean and as the median
# over epochs (robust to a busy machine), the loss curve's ends and the process's peak RSS.
#
# Usage: bench/cpsam_train.sh [epochs] [n_images] [tiny|full] [cpu|cuda]
#   tiny (default): the tiny CPSAM test fixture (width 64, 2 blocks);
#   full: the full ViT-L (width 1024, 24 blocks, 305 M parameters), randomly initialised and
#         written by cellpose 4 itself (defaults: 2 epochs of 2 images).
# Env: BIN (our binary, default target/release/cellpose-train-worker), PY (python with torch),
#      CP4 (cellpose 4 folder for PYTHONPATH, default .venv-cp4), MODEL (overrides the model file).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${3:-tiny}; DEVICE=${4:-cpu}
case "$SIZE" in
  tiny) EPOCHS=${1:-30}; NIMG=${2:-4} ;;
  full) EPOCHS=${1:-2}; NIMG=${2:-2} ;;
  *) echo "size must be tiny or full, got $SIZE" >&2; exit 2 ;;
esac
BIN=${BIN:-target/release/cellpose-train-worker}
PY=${PY:-.venv/bin/python}; CP4=${CP4:-.venv-cp4}
THREADS=${OMP_NUM_THREADS:-2}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
if [ -n "${MODEL:-}" ]; then :
elif [ "$SIZE" = full ]; then
  MODEL="$work/vitl.pth"
  PYTHONPATH="$CP4" "$PY" tools/cpsam_ref.py vitl "$MODEL" --seed 3 >/dev/null
else MODEL=tests/fixtures/cpsam/tiny.pth; fi
"$BIN" synth --out "$work/data" --n "$NIMG" --size 128 --cells 10 >/dev/null 2>&1
PYTHONPATH="$CP4" "$PY" - "$work/data" "$work" <<'PYEOF'
import sys, glob, numpy as np, tifffile
d, w = sys.argv[1], sys.argv[2]
imgs = sorted(f for f in glob.glob(d + "/*.tif") if not f.endswith("_masks.tif"))
np.save(w + "/imgs.npy", np.stack([tifffile.imread(f).astype(np.float32) for f in imgs]))
np.save(w + "/labels.npy", np.stack([tifffile.imread(f[:-4] + "_masks.tif").astype(np.int32) for f in imgs]))
PYEOF
echo "cpsam training benchmark ($SIZE): $MODEL, epochs=$EPOCHS images=$NIMG batch=1 bsize=256 threads=$THREADS device=$DEVICE"
lscpu | grep -m1 "Model name" || true
# peak RSS (kB) of a command, written to $1; on CUDA also the peak GPU memory in use (MiB, sampled
# by nvidia-smi every 100 ms) to $1.gpu
rss() {
  local out=$1; shift
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$out.gpu.log" 2>/dev/null & local smi=$!
    /usr/bin/time -f %M -o "$out" "$@"; local rc=$?
    kill "$smi" 2>/dev/null; sort -n "$out.gpu.log" | tail -1 >"$out.gpu"; return $rc
  fi
  /usr/bin/time -f %M -o "$out" "$@"
}
OMP_NUM_THREADS=$THREADS PYTHONWARNINGS=ignore PYTHONPATH="$CP4" \
  rss "$work/py.rss" "$PY" tools/cpsam_train_ref.py train "$MODEL" \
  "$work/imgs.npy" "$work/labels.npy" "$work" --n-epochs "$EPOCHS" --lr 1e-4 --timing --device "$DEVICE" \
  >"$work/py.json" 2>"$work/py.log" || { cat "$work/py.log"; exit 1; }
for prec in off on; do
  OMP_NUM_THREADS=$THREADS RUST_LOG=warn rss "$work/rs-$prec.rss" "$BIN" train --dir "$work/data" \
    --pretrained-model "$MODEL" --n-epochs "$EPOCHS" --device "$DEVICE" --mixed-precision "$prec" \
    --min-train-masks 1 --learning-rate 1e-4 --model-name "bench-$prec" --summary-json "$work/rs-$prec.json" \
    2>"$work/rs-$prec.log" || { cat "$work/rs-$prec.log"; exit 1; }
done
"$PY" - "$work" "$NIMG" <<'PYEOF'
import json, os, statistics, sys
w, steps = sys.argv[1], int(sys.argv[2])
TOKENS = (256 // 8) ** 2  # tokens per 256x256 tile (8x8 patches), one tile per step (batch 1)
rss = lambda name: int(open(f"{w}/{name}.rss").read().split()[-1]) / 1e6
def gpu(name):
    f = f"{w}/{name}.rss.gpu"
    return f" {int(open(f).read().strip() or 0) / 1024:9.2f}" if os.path.exists(f) else ""
py = json.load(open(f"{w}/py.json"))
p, p_med = py["steady_step_seconds"], py["median_step_seconds"]
gpu_head = f" {'peak GPU GB':>9}" if gpu("py") else ""
print(f"{'':28} {'mean s/step':>12} {'median s/step':>14} {'ratio (median)':>15} {'tokens/s':>9} {'loss first -> last':>20} {'peak RSS GB':>12}{gpu_head}")
print(f"{'cellpose 4.2.1.1 (fp32)':28} {p:12.4f} {p_med:14.4f} {1:15.3f} {TOKENS / p_med:9.0f} "
      f"{py['train_losses'][0]:9.3f} -> {py['train_losses'][-1]:6.3f} {rss('py'):12.2f}{gpu('py')}")
for prec in ("off", "on"):
    rs = json.load(open(f"{w}/rs-{prec}.json")); o = rs["outcome"]
    e = o["epoch_seconds"][1:]
    r_med = statistics.median(e) / steps if e else o["steady_step_seconds"]
    name = f"this project ({rs.get('precision', prec)})"
    print(f"{name:28} {o['steady_step_seconds']:12.4f} {r_med:14.4f} {r_med / p_med:15.3f} {TOKENS / r_med:9.0f} "
          f"{o['train_losses'][0]:9.3f} -> {o['train_losses'][-1]:6.3f} {rss('rs-' + prec):12.2f}{gpu('rs-' + prec)}")
print(f"torch threads: python {py['torch_threads']}; ours {rs['device']}")
PYEOF
