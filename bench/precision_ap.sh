#!/usr/bin/env bash
# Does bf16 mixed precision cost accuracy? Trains the same model on the same synthetic data with
# float32 and with bf16 mixed precision for several seeds, scores each trained model on a held-out
# synthetic set, and prints AP@0.5/0.75/0.9 and the final training loss per run, then each
# precision's mean and its seed-to-seed range. `[training] mixed_precision = auto` turns bf16 on
# for a family on a CPU with bf16 kernels only where bf16's mean AP lies within float32's seed
# range at every threshold (src/precision.rs). Not a test: minutes of training per run.
#
# Usage: bench/precision_ap.sh [cpnet|cpsam|both] [seeds] [cpnet epochs] [cpsam epochs]
#   cpnet: cellpose 3's full-size CPnet (nbase 32..256) from scratch, bsize 128, batch 8, AdamW
#          lr 0.005, 100 epochs; data: 8 training and 4 held-out synthetic images, 128x128,
#          crowded (60 touching cells of radius 5-9 each);
#   cpsam: the tiny Cellpose-SAM fixture (width 64, 2 blocks) fine-tuned, lr 1e-3, batch 1
#          (cellpose 4's defaults otherwise), 300 epochs; data: 6 training and 4 held-out images,
#          128x128, 10 cells of radius 8-13 (the tiny network's 8x8 tokens find no smaller cells).
#   3 seeds by default.
# Env: BIN (our binary), DEVICE (cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-both}; SEEDS=${2:-3}; CPNET_EPOCHS=${3:-100}; CPSAM_EPOCHS=${4:-300}
BIN=${BIN:-target/release/cellpose-train-worker}; DEVICE=${DEVICE:-cpu}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$BIN" synth --out "$work/cpnet/train" --n 8 --size 128 --cells 60 --radius 5,9 --seed 100 >/dev/null 2>&1
"$BIN" synth --out "$work/cpnet/test" --n 4 --size 128 --cells 60 --radius 5,9 --seed 200 >/dev/null 2>&1
"$BIN" synth --out "$work/cpsam/train" --n 6 --size 128 --cells 10 --radius 8,13 --seed 100 >/dev/null 2>&1
"$BIN" synth --out "$work/cpsam/test" --n 4 --size 128 --cells 10 --radius 8,13 --seed 200 >/dev/null 2>&1
lscpu | grep -m1 "Model name" || true
grep -qw avx512_bf16 /proc/cpuinfo && echo "CPU flags: avx512_bf16 present" || echo "CPU flags: no avx512_bf16"
results="$work/results.jsonl"
for fam in cpnet cpsam; do
  [ "$WHICH" = both ] || [ "$WHICH" = "$fam" ] || continue
  for seed in $(seq 0 $((SEEDS - 1))); do
    for prec in off on; do
      name="$fam-$prec-$seed"; t0=$(date +%s.%N)
      if [ "$fam" = cpnet ]; then
        "$BIN" train --dir "$work/cpnet/train" --pretrained-model None --chan 1 --chan2 2 --n-epochs "$CPNET_EPOCHS" \
          --bsize 128 --batch-size 8 --learning-rate 0.005 --seed "$seed" --device "$DEVICE" \
          --mixed-precision "$prec" --model-name "$name" --summary-json "$work/$name.json" >/dev/null 2>"$work/$name.log" \
          || { cat "$work/$name.log"; exit 1; }
        model="$work/cpnet/train/models/$name"
      else
        "$BIN" train --dir "$work/cpsam/train" --pretrained-model tests/fixtures/cpsam/tiny.pth --n-epochs "$CPSAM_EPOCHS" \
          --learning-rate 1e-3 --min-train-masks 1 --seed "$seed" --device "$DEVICE" \
          --mixed-precision "$prec" --model-name "$name" --summary-json "$work/$name.json" >/dev/null 2>"$work/$name.log" \
          || { cat "$work/$name.log"; exit 1; }
        model="$work/cpsam/train/models/$name"
      fi
      chans=(); [ "$fam" = cpnet ] && chans=(--chan 1 --chan2 2)
      "$BIN" eval --dir "$work/$fam/test" --model "$model" "${chans[@]}" --device "$DEVICE" --json >"$work/$name.eval.json" 2>>"$work/$name.log" \
        || { cat "$work/$name.log"; exit 1; }
      secs=$(echo "$(date +%s.%N) - $t0" | bc)
      "$(dirname "$0")/../.venv/bin/python" - "$work/$name.json" "$work/$name.eval.json" "$fam" "$prec" "$seed" "$secs" >>"$results" <<'PYEOF'
import json, sys
s, e = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
ap = e["ap"]
ap = [ap[k] for k in ("0.5", "0.75", "0.9")] if isinstance(ap, dict) else ap
print(json.dumps({"family": sys.argv[3], "precision": s.get("precision", sys.argv[4]), "seed": int(sys.argv[5]),
                  "ap": ap, "final_loss": s["outcome"]["train_losses"][-1],
                  "steady_step_seconds": s["outcome"]["steady_step_seconds"], "seconds": float(sys.argv[6])}))
PYEOF
      tail -1 "$results"
    done
  done
done
"$(dirname "$0")/../.venv/bin/python" - "$results" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for fam in sorted({r["family"] for r in rows}):
    print(f"\n{fam}: {'precision':11} {'AP@0.5':>16} {'AP@0.75':>16} {'AP@0.9':>16} {'final loss':>18} {'s/step':>8}")
    by = {}
    for p in ("fp32", "bf16-mixed"):
        rs = [r for r in rows if r["family"] == fam and r["precision"] == p]
        if not rs: continue
        cols = []
        for i in range(3):
            v = [r["ap"][i] for r in rs]
            cols.append((sum(v) / len(v), min(v), max(v)))
        l = [r["final_loss"] for r in rs]
        st = sum(r["steady_step_seconds"] for r in rs) / len(rs)
        by[p] = cols
        print(f"{'':7}{p:11} " + " ".join(f"{m:.3f} [{lo:.3f},{hi:.3f}]" for m, lo, hi in cols)
              + f" {sum(l)/len(l):.4f} [{min(l):.3f},{max(l):.3f}] {st:8.3f}")
    if len(by) == 2:
        inside = all(lo <= m <= hi or m >= hi for (m, _, _), (_, lo, hi) in zip(by["bf16-mixed"], by["fp32"]))
        print(f"{'':7}bf16 mean AP within (or above) fp32's seed range at 0.5/0.75/0.9: {'yes' if inside else 'no'}")
PYEOF
