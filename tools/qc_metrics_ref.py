"""Reference QC metrics for tests/it/metrics.rs: precision, recall, F1 and panoptic quality at
IoU 0.5/0.75/0.9 for the metrics fixture pairs (tests/fixtures/dynamics), both label images
relabelled consecutively first (as the worker scores them).

TP/FP/FN come from cellpose 3.1.1.2 `metrics.average_precision` (its optimal matching). PQ's
matched IoU sum is computed independently with numpy: at IoU >= 0.5 a true object and a
prediction can only pair with each other (two objects above 0.5 with the same partner would
overlap), so the matches are simply the pairs above the threshold; cellpose's `_intersection_over_union`
gives the IoU matrix.

Usage: python tools/qc_metrics_ref.py FIXTURE_DIR NAME... ; prints JSON {name: {...}}.
"""
import json
import sys

import numpy as np
from cellpose import metrics

THRESHOLDS = [0.5, 0.75, 0.9]


def relabel(m):
    """Consecutive labels 1..n, background 0 kept."""
    vals, inv = np.unique(m, return_inverse=True)
    inv = inv.reshape(m.shape)
    if vals[0] != 0:
        inv = inv + 1
    return inv.astype(np.int32)


def ratio(a, b):
    return None if b == 0 else float(a) / float(b)


def scores(t, p):
    t, p = relabel(t), relabel(p)
    ap, tp, fp, fn = metrics.average_precision([t], [p], threshold=THRESHOLDS)
    iou = metrics._intersection_over_union(t, p)[1:, 1:]
    out = {k: [] for k in ["tp", "fp", "fn", "precision", "recall", "f1", "pq"]}
    for i, th in enumerate(THRESHOLDS):
        ntp, nfp, nfn = int(tp[0, i]), int(fp[0, i]), int(fn[0, i])
        matched = iou[iou >= th] if iou.size else np.zeros(0)
        # the independent matching must find cellpose's TP count
        assert len(matched) == ntp, (th, len(matched), ntp)
        out["tp"].append(ntp)
        out["fp"].append(nfp)
        out["fn"].append(nfn)
        out["precision"].append(ratio(ntp, ntp + nfp))
        out["recall"].append(ratio(ntp, ntp + nfn))
        out["f1"].append(ratio(2 * ntp, 2 * ntp + nfp + nfn))
        d = ntp + 0.5 * (nfp + nfn)
        out["pq"].append(None if d == 0 else float(matched.sum()) / d)
    return out


def main():
    folder, names = sys.argv[1], sys.argv[2:]
    result = {}
    for name in names:
        if name.startswith("segmented_"):
            case = name[len("segmented_"):]
            t = np.load(f"{folder}/masks_{case}_labels.npy")
            p = np.load(f"{folder}/masks_{case}_cpu.npy")
        else:
            t = np.load(f"{folder}/metrics_{name}_true.npy")
            p = np.load(f"{folder}/metrics_{name}_pred.npy")
        result[name] = scores(t, p)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
