#!/usr/bin/env python
"""Regenerates the golden fixtures under tests/fixtures/dynamics/ with Python cellpose 3.1.1.2.

Run from the repository root with the project venv:

    .venv/bin/python tools/make_dynamics_fixtures.py

What it writes (all arrays as .npy, scalars in JSON):
- flows_<name>_labels.npy          input label images (uint16), hand-made and synthetic
- flows_<name>_cpu.npy              dynamics.labels_to_flows(device=cpu): [4, H, W] float32
- flows_<name>_gpu.npy              dynamics.masks_to_flows_gpu(device=cpu): [2, H, W] float32
                                    (the torch algorithm cellpose uses on CUDA, run on the CPU)
- flows.json                        utils.diameters per label image
- masks_<case>_dp.npy / _cellprob   synthetic network outputs (float16, exact in float32):
                                    5 * masks_to_flows(labels) + smoothed noise, and logits
- masks_<case>_labels.npy           the label image they were made from (uint16)
- masks_<case>_raw.npy              get_masks output before the flow-error check (uint16)
- masks_<case>_cpu.npy              resize_and_compute_masks(device=cpu) (uint16)
- masks_<case>_torch.npy            the same with steps_interp forced onto its torch/grid_sample
                                    branch (what cellpose runs on CUDA), on the CPU
- masks.json                        the parameters of each case
- metrics_<pair>_true.npy / _pred   label pairs (uint16)
- metrics.json                      metrics.average_precision, mask_ious, aggregated_jaccard_index

With `--cuda-out DIR` (on a machine with CUDA) it instead writes cellpose's CUDA results for the
committed inputs into DIR, for the ignored test `dynamics::cuda_matches_cellpose_on_cuda`
(run it with CPW_GPU_GOLDEN=DIR and `--ignored`).

Everything is seeded; rerunning reproduces the files bit for bit on the same library versions.
"""
import importlib.metadata
import inspect
import json
import logging
import os
import sys

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from cellpose import dynamics, metrics, utils

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "dynamics")
CPU = torch.device("cpu")
logging.disable(logging.WARNING)


def save(name, arr):
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(arr))


# ---------------------------------------------------------------------------------------------
# label images


def voronoi_cells(shape, n, radius, rng, fill_background=False):
    """Touching, irregular cells: Voronoi regions of random points clipped to a radius."""
    H, W = shape
    pts = rng.uniform([0, 0], [H, W], size=(n, 2))
    yy, xx = np.mgrid[:H, :W]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    lab = d.argmin(-1).astype(np.int32) + 1
    if not fill_background:
        lab[d.min(-1) > radius**2] = 0
    return lab


def shapes_image():
    """Hand-made objects covering the awkward cases of labels -> flows."""
    lab = np.zeros((64, 72), np.int32)
    lab[0:9, 0:12] = 40  # touches the top-left corner
    lab[12:22, 4:14] = 3  # two touching rectangles, non-consecutive labels
    lab[12:22, 14:26] = 7
    # a C shape (concave)
    lab[28:46, 4:22] = 9
    lab[32:42, 10:22] = 0
    # an L shape
    lab[50:62, 4:8] = 11
    lab[58:62, 4:20] = 11
    # 1-pixel-wide objects: horizontal, vertical, diagonal (8-connected)
    lab[2, 20:44] = 12
    lab[6:30, 30] = 13
    for k in range(14):
        lab[8 + k, 36 + k] = 14
    # a single pixel and a 2x2 square
    lab[26, 40] = 15
    lab[30:32, 44:46] = 16
    # a ring with another object inside its hole
    lab[36:56, 32:52] = 17
    lab[40:52, 36:48] = 0
    lab[43:49, 39:45] = 18
    # one label in two separate pieces
    lab[4:10, 56:62] = 19
    lab[14:18, 60:66] = 19
    # touching the right and bottom borders, with a large label value
    lab[40:64, 60:72] = 65000
    return lab


def flows_fixtures():
    rng = np.random.default_rng(1)
    images = {
        "shapes": shapes_image(),
        "cells": voronoi_cells((96, 96), 40, 9.0, rng),
        "dense": voronoi_cells((48, 64), 20, 0.0, rng, fill_background=True),
        "empty": np.zeros((24, 20), np.int32),
    }
    out = {}
    for name, lab in images.items():
        save(f"flows_{name}_labels", lab.astype(np.uint16))
        flows = dynamics.labels_to_flows([lab.copy()], device=CPU)[0]
        save(f"flows_{name}_cpu", flows.astype(np.float32))
        if lab.max() > 0:
            mu, _ = dynamics.masks_to_flows_gpu(flows[0].astype(int), device=CPU)
        else:
            mu = np.zeros((2, *lab.shape))
        save(f"flows_{name}_gpu", mu.astype(np.float32))
        md, per = utils.diameters(lab)
        md_f, per_f = utils.diameters(flows[0])
        out[name] = {
            "median": float(md),
            "per_mask": [float(v) for v in per],
            "median_relabelled": float(md_f),
        }
    return out


# ---------------------------------------------------------------------------------------------
# flows -> masks


def torch_steps_interp():
    """dynamics.steps_interp with its torch (CUDA) branch taken on any device."""
    src = inspect.getsource(dynamics.steps_interp)
    cond = '(device.type == "cuda" or device.type == "mps") or ndim==3'
    assert cond in src, "cellpose changed steps_interp; update this fixture script"
    ns = dict(vars(dynamics))
    exec(src.replace(cond, "True"), ns)
    return ns["steps_interp"]


def synth_outputs(lab, rng, noise, smooth, bad_boxes=()):
    """Network-like outputs from a label image: 5x flows and cellprob logits, plus noise."""
    mu = dynamics.masks_to_flows(lab, device=CPU)
    dp = 5.0 * mu + gaussian_filter(rng.normal(0, noise, mu.shape), (0, smooth, smooth)) * 3
    cp = np.where(lab > 0, 3.0, -3.0) + gaussian_filter(rng.normal(0, 2.0, lab.shape), smooth) * 3
    cp = gaussian_filter(cp, 1.0)
    for y0, y1, x0, x1 in bad_boxes:  # regions where the "network" is wrong
        dp[:, y0:y1, x0:x1] = rng.normal(0, 3.0, (2, y1 - y0, x1 - x0))
    # float16-representable values so the fixture can be stored at half size exactly
    return dp.astype(np.float16).astype(np.float32), cp.astype(np.float16).astype(np.float32)


def masks_fixtures():
    rng = np.random.default_rng(2)
    cases = {
        "small": dict(shape=(64, 64), n=14, radius=9.0, noise=0.6, smooth=1.0, bad=[],
                      params={}),
        "noisy": dict(shape=(128, 128), n=60, radius=10.0, noise=1.2, smooth=1.5,
                      bad=[(10, 40, 70, 110), (90, 120, 10, 30)], params={}),
        "wide": dict(shape=(80, 112), n=30, radius=8.0, noise=0.8, smooth=1.0, bad=[(50, 70, 20, 50)],
                     params=dict(cellprob_threshold=-1.0, flow_threshold=0.8, min_size=30, niter=150)),
        "resized": dict(shape=(64, 72), n=16, radius=8.0, noise=0.6, smooth=1.0, bad=[],
                        params=dict(resize=[100, 90], niter=311)),
        "noflowcheck": dict(shape=(96, 96), n=40, radius=9.0, noise=1.0, smooth=1.0,
                            bad=[(0, 30, 0, 30)], params=dict(flow_threshold=0.0, min_size=0)),
    }
    steps_torch = torch_steps_interp()
    steps_orig = dynamics.steps_interp
    out = {}
    for name, c in cases.items():
        lab = voronoi_cells(c["shape"], c["n"], c["radius"], rng)
        dp, cp = synth_outputs(lab, rng, c["noise"], c["smooth"], c["bad"])
        save(f"masks_{name}_labels", lab.astype(np.uint16))
        save(f"masks_{name}_dp", dp.astype(np.float16))
        save(f"masks_{name}_cellprob", cp.astype(np.float16))
        p = dict(niter=200, cellprob_threshold=0.0, flow_threshold=0.4, min_size=15,
                 max_size_fraction=0.4, resize=None)
        p.update(c["params"])
        out[name] = p
        raw = dynamics.compute_masks(dp, cp, niter=p["niter"], cellprob_threshold=p["cellprob_threshold"],
                                     flow_threshold=0.0, max_size_fraction=p["max_size_fraction"],
                                     device=CPU)
        save(f"masks_{name}_raw", raw.astype(np.uint16))
        for variant, steps in (("cpu", steps_orig), ("torch", steps_torch)):
            dynamics.steps_interp = steps
            try:
                m = dynamics.resize_and_compute_masks(
                    dp, cp, niter=p["niter"], cellprob_threshold=p["cellprob_threshold"],
                    flow_threshold=p["flow_threshold"], min_size=p["min_size"],
                    max_size_fraction=p["max_size_fraction"], resize=p["resize"], device=CPU)
            finally:
                dynamics.steps_interp = steps_orig
            save(f"masks_{name}_{variant}", m.astype(np.uint16))
            out[name][f"n_{variant}"] = int(m.max())
    return out


# ---------------------------------------------------------------------------------------------
# metrics


def metrics_fixtures(masks_out):
    rng = np.random.default_rng(3)
    base = voronoi_cells((80, 80), 25, 9.0, rng)
    base = base * (base > 0)
    H, W = base.shape
    pairs = {}
    pairs["identical_permuted"] = (base, np.where(base > 0, rng.permutation(base.max() + 1)[base] + 1, 0))
    shifted = np.zeros_like(base)
    shifted[2:, 1:] = base[:-2, :-1]
    pairs["shifted"] = (base, shifted)
    # split: cut the largest object in two; merge: join two touching objects
    split = base.copy()
    big = np.bincount(base.ravel())[1:].argmax() + 1
    ys, xs = np.nonzero(base == big)
    split[ys[xs > np.median(xs)], xs[xs > np.median(xs)]] = base.max() + 1
    pairs["split"] = (base, split)
    merged = base.copy()
    merged[merged == 2] = 1
    merged[merged == 4] = 3
    pairs["merged"] = (base, merged)
    # extra and missing objects
    extra = base.copy()
    extra[base == 5] = 0
    extra[base == 6] = 0
    extra[0:6, 0:6] = base.max() + 3
    extra[70:80, 70:74] = base.max() + 7
    pairs["extra_missing"] = (base, extra)
    pairs["empty_pred"] = (base, np.zeros_like(base))
    pairs["empty_true"] = (np.zeros_like(base), base)
    pairs["both_empty"] = (np.zeros_like(base), np.zeros_like(base))
    # gaps in the ground-truth labels (counted by the largest label in cellpose)
    gaps = np.where(base > 0, base * 3 + 10, 0)
    pairs["gapped_true"] = (gaps, shifted)
    # dilated/eroded predictions give IoUs spread across the thresholds
    eroded = base.copy()
    eroded[1:-1, 1:-1][(base[:-2, 1:-1] != base[1:-1, 1:-1]) | (base[2:, 1:-1] != base[1:-1, 1:-1])] = 0
    pairs["eroded"] = (base, eroded)
    # optimal matching matters below IoU 0.5: pred x straddles true A|B (IoU 1/3 each), pred y is
    # a sliver of A (IoU 0.3); at 0.25 the best matching pairs y-A and x-B
    crossed_t = np.zeros((20, 40), np.int32)
    crossed_t[5:15, 5:15] = 1
    crossed_t[5:15, 15:25] = 2
    crossed_p = np.zeros_like(crossed_t)
    crossed_p[5:15, 10:20] = 1
    crossed_p[5:15, 5:8] = 2
    pairs["crossed"] = (crossed_t, crossed_p)
    # a real segmentation: cellpose masks against the labels they came from
    for case in ("noisy", "wide"):
        lab = np.load(os.path.join(OUT, f"masks_{case}_labels.npy"))
        pred = np.load(os.path.join(OUT, f"masks_{case}_cpu.npy")).astype(np.int32)
        pairs[f"segmented_{case}"] = (lab, pred)

    thresholds = [0.1, 0.25, 0.5, 0.75, 0.9]
    out = {"thresholds": thresholds, "pairs": {}}
    for name, (t, p) in pairs.items():
        t = t.astype(np.int32)
        p = p.astype(np.int32)
        if not name.startswith("segmented"):
            save(f"metrics_{name}_true", t.astype(np.uint16))
            save(f"metrics_{name}_pred", p.astype(np.uint16))
        ap, tp, fp, fn = metrics.average_precision(t, p, threshold=thresholds)
        entry = {
            "ap": [None if np.isnan(v) else float(v) for v in ap],
            "tp": [float(v) for v in tp],
            "fp": [float(v) for v in fp],
            "fn": [float(v) for v in fn],
        }
        if t.max() > 0 and p.max() > 0:
            iout, preds = metrics.mask_ious(t, p)
            entry["iout"] = [float(v) for v in iout]
            entry["preds"] = [int(v) for v in preds]
            entry["aji"] = float(metrics.aggregated_jaccard_index([t], [p])[0])
        out["pairs"][name] = entry
    return out


def cuda_goldens(out_dir):
    """Outputs of cellpose on CUDA for the committed inputs (not committed: GPU-only check).

    Writes flows_<name>_cuda.npy (labels_to_flows, [4, H, W]) and masks_<case>_cuda.npy
    (resize_and_compute_masks) into out_dir, for the ignored Rust test
    `dynamics::cuda_matches_cellpose_on_cuda` (CPW_GPU_GOLDEN=out_dir).
    """
    dev = torch.device("cuda")
    os.makedirs(out_dir, exist_ok=True)
    for name in ("shapes", "cells", "dense", "empty"):
        lab = np.load(os.path.join(OUT, f"flows_{name}_labels.npy")).astype(np.int32)
        flows = dynamics.labels_to_flows([lab], device=dev)[0]
        np.save(os.path.join(out_dir, f"flows_{name}_cuda.npy"), flows.astype(np.float32))
    with open(os.path.join(OUT, "masks.json")) as f:
        cases = json.load(f)
    for name, p in cases.items():
        dp = np.load(os.path.join(OUT, f"masks_{name}_dp.npy")).astype(np.float32)
        cp = np.load(os.path.join(OUT, f"masks_{name}_cellprob.npy")).astype(np.float32)
        m = dynamics.resize_and_compute_masks(
            dp, cp, niter=p["niter"], cellprob_threshold=p["cellprob_threshold"],
            flow_threshold=p["flow_threshold"], min_size=p["min_size"],
            max_size_fraction=p["max_size_fraction"], resize=p["resize"], device=dev)
        np.save(os.path.join(out_dir, f"masks_{name}_cuda.npy"), m.astype(np.uint16))
        print(name, "cuda masks:", int(m.max()))


def main():
    found = importlib.metadata.version("cellpose")
    assert found == "3.1.1.2", f"fixtures are pinned to cellpose 3.1.1.2, found {found}"
    if len(sys.argv) == 3 and sys.argv[1] == "--cuda-out":
        cuda_goldens(sys.argv[2])
        return 0
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    flows = flows_fixtures()
    with open(os.path.join(OUT, "flows.json"), "w") as f:
        json.dump(flows, f, indent=1)
    masks = masks_fixtures()
    with open(os.path.join(OUT, "masks.json"), "w") as f:
        json.dump(masks, f, indent=1)
    mets = metrics_fixtures(masks)
    with open(os.path.join(OUT, "metrics.json"), "w") as f:
        json.dump(mets, f, indent=1)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk.startswith("n_")} for k, v in masks.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
