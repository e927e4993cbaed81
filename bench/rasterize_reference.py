"""Python side of bench/rasterize.rs: the label-mask loop of NimbusImage's "Cellpose retrain"
worker (one full-frame skimage.draw.polygon2mask per annotation, mask[m] = i + 1), timed on the
first `count` polygons of the bench's polygon file.

Usage: rasterize_reference.py POLYGONS.json COUNT OUT.npy
Prints one JSON line {"seconds": ..., "timed": COUNT, "skimage": version}; writes the label mask to
OUT.npy (uint32) so the Rust side can check it drew the same pixels.
"""

import json
import sys
import time

import numpy as np
import skimage
from skimage.draw import polygon2mask


def main():
    path, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(path) as f:
        data = json.load(f)
    frame = tuple(data["frame"])
    polygons = data["polygons"][:count]
    start = time.perf_counter()
    mask = np.zeros(frame, dtype=np.uint32)
    for i, points in enumerate(polygons):
        polygon = [(y, x) for x, y in points]
        m = polygon2mask(frame, polygon)
        mask[m] = i + 1
    seconds = time.perf_counter() - start
    np.save(out, mask)
    print(json.dumps({"seconds": seconds, "timed": len(polygons), "skimage": skimage.__version__}))


if __name__ == "__main__":
    main()
