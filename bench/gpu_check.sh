#!/usr/bin/env bash
# Runs on a GPU machine (see bench/README.md): CUDA sanity checks and the GPU training benchmark.
# Expects the stripped binary in .carry/ and cellpose wheels in .whl/ (both carried, not committed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib"
export BIN=$PWD/.carry/cellpose-train-worker PY=python3 PYTHONWARNINGS=ignore
nvidia-smi -L
work=$(mktemp -d)
"$BIN" synth --out "$work/d" --n 4 --size 300 --cells 30 2>/dev/null
"$BIN" model init --out "$work/m.pth" 2>/dev/null
echo "== predict: cuda vs cpu"
"$BIN" predict --model "$work/m.pth" --image "$work/d/img_000.tif" --out "$work/cpu.tif" --chan 1 --chan2 2 --diameter 20 --device cpu
"$BIN" predict --model "$work/m.pth" --image "$work/d/img_000.tif" --out "$work/gpu.tif" --chan 1 --chan2 2 --diameter 20 --device cuda
python3 -c "
import tifffile, numpy as np, sys
a = tifffile.imread('$work/cpu.tif'); b = tifffile.imread('$work/gpu.tif')
print('predict cuda vs cpu: max abs diff %.3e, max abs value %.3e' % (np.abs(a-b).max(), np.abs(a).max()))"
echo "== profile (host enqueue vs device time)"
RUST_LOG=info "$BIN" train --profile-steps --dir "$work/d" --pretrained-model None --chan 1 --chan2 2 --n-epochs 2 --batch-size 4 --device cuda --min-train-masks 1 --model-name prof 2>&1 | grep profile | tail -3
echo "== training benchmark (cuda)"
bash bench/train_speed.sh cuda "${EPOCHS:-8}" "${NIMG:-32}" 224 2>&1 | tee "$OUT/train_speed_cuda.txt"
echo "== variants (same data and seed): graphs / channels-last / bf16"
"$BIN" synth --out "$work/b" --n 32 --size 256 --cells 40 2>/dev/null
for v in "off on off" "on on off" "on on on" "on off off"; do
  set -- $v
  RUST_LOG=warn "$BIN" train --dir "$work/b" --pretrained-model None --chan 1 --chan2 2 --n-epochs "${EPOCHS:-8}" --batch-size 8 \
    --device cuda --min-train-masks 1 --cuda-graphs $1 --channels-last $2 --mixed-precision $3 --model-name v --summary-json "$work/v.json" 2>"$work/v.log" || tail -5 "$work/v.log"
  grep -i "graph" "$work/v.log" | tail -2
  python3 -c "
import json; d = json.load(open('$work/v.json'))['outcome']
print('graphs $1, channels-last $2, bf16 $3: %.4f s/step, data wait %.2fs, losses %s' % (d['steady_step_seconds'], d['data_wait_seconds'], ' '.join('%.4f' % x for x in d['train_losses'])))"
done
echo "== Cellpose-SAM training step, full ViT-L, vs cellpose 4.2.1.1 (needs cellpose 4 wheels in .whl4/)"
if ls .whl4/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site4 .whl4/*.whl
  CP4=/tmp/site4 PYTHONPATH= bash bench/cpsam_train.sh 3 4 full cuda 2>&1 | tee "$OUT/cpsam_train_full_cuda.txt"
  CP4=/tmp/site4 PYTHONPATH= bash bench/cpsam_train.sh 30 4 tiny cuda 2>&1 | tee "$OUT/cpsam_train_tiny_cuda.txt"
fi
