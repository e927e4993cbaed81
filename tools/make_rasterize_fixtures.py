"""Golden label masks for src/rasterize.rs, made the way NimbusImage's "Cellpose retrain" worker
makes them: per annotation, skimage.draw.polygon2mask(frame_shape, [(c.y, c.x) ...]) and
mask[m] = i + 1 (later annotations overwrite earlier ones), then the region crop
[int(min y):int(max y), int(min x):int(max x)] (clipped to the frame: negative starts become 0,
where Python slicing would count from the end).

Writes tests/fixtures/rasterize/goldens.json (named cases, as NimbusImage annotation documents) and
tests/fixtures/rasterize/random.json (seeded random polygons, compact). Masks are stored run-length
encoded over the row-major array as a flat [value, count, value, count, ...] list.

Run: .venv/bin/python tools/make_rasterize_fixtures.py
"""

import json
import math
import pathlib

import numpy as np
import skimage
from skimage.draw import polygon2mask

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "rasterize"
SEED = 20250611


def reference_labels(frame_shape, polygons):
    """The reference worker's loop: one full-frame polygon2mask per annotation, labels i+1."""
    mask = np.zeros(frame_shape, dtype=np.uint32)
    for i, points in enumerate(polygons):
        polygon = [(y, x) for x, y in points]
        m = polygon2mask(frame_shape, polygon)
        mask[m] = i + 1
    return mask


def reference_region(frame_shape, points):
    """int() truncation of the bounding box, maximum exclusive, clipped to the frame."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x0, x1, y0, y1 = int(min(xs)), int(max(xs)), int(min(ys)), int(max(ys))
    h, w = frame_shape
    return [min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h)]


def rle(mask):
    flat = mask.ravel()
    out = []
    start = 0
    n = flat.size
    while start < n:
        v = flat[start]
        end = start + 1
        while end < n and flat[end] == v:
            end += 1
        out += [int(v), end - start]
        start = end
    return out


def doc(i, shape, points, tags=("cell",)):
    return {
        "_id": f"a{i:04d}",
        "shape": shape,
        "coordinates": [{"x": x, "y": y, "z": 0} for x, y in points],
        "tags": list(tags),
        "channel": 0,
        "location": {"XY": 0, "Z": 0, "Time": 0},
        "datasetId": "6b03249f94fa99a6a51d070b",
        "name": "",
        "color": None,
    }


def named_cases():
    """(name, frame (h, w), [(shape, points)], region points or None)."""
    star = [(16 + (12 if k % 2 == 0 else 5) * math.cos(k * math.pi / 5),
             16 + (12 if k % 2 == 0 else 5) * math.sin(k * math.pi / 5)) for k in range(10)]
    pentagram = [(16 + 12 * math.cos(k * 4 * math.pi / 5 - math.pi / 2),
                  16 + 12 * math.sin(k * 4 * math.pi / 5 - math.pi / 2)) for k in range(5)]
    return [
        ("convex triangle, integer vertices", (20, 24), [("polygon", [(3, 2), (20, 5), (9, 17)])], None),
        ("convex hexagon, float vertices", (24, 24),
         [("polygon", [(12 + 9.3 * math.cos(k * math.pi / 3 + 0.2), 11.7 + 8.1 * math.sin(k * math.pi / 3 + 0.2))
                       for k in range(6)])], None),
        ("concave star", (32, 32), [("polygon", star)], None),
        ("concave U shape", (20, 20), [("polygon", [(2, 2), (17, 2), (17, 16), (12, 16), (12, 7), (7, 7), (7, 16), (2, 16)])], None),
        ("self-intersecting bow tie", (20, 20), [("polygon", [(2.5, 2.5), (16.5, 15.5), (16.5, 2.5), (2.5, 15.5)])], None),
        ("self-intersecting pentagram (even-odd centre)", (32, 32), [("polygon", pentagram)], None),
        ("figure eight through a pixel centre", (12, 12), [("polygon", [(1, 1), (9, 9), (9, 1), (1, 9)])], None),
        ("sub-pixel triangle missing every centre", (6, 6), [("polygon", [(2.1, 2.1), (2.9, 2.2), (2.5, 2.8)])], None),
        ("sub-pixel triangle around one centre", (6, 6), [("polygon", [(2.8, 2.8), (3.3, 2.9), (3.0, 3.3)])], None),
        ("vertices exactly on pixel centres", (10, 10), [("polygon", [(1, 1), (7, 2), (8, 8), (2, 6)])], None),
        ("half-integer coordinates", (10, 10), [("polygon", [(1.5, 0.5), (7.5, 2.5), (6.5, 8.5), (0.5, 5.5)])], None),
        ("degenerate collinear polygon", (8, 8), [("polygon", [(0, 0), (6, 3), (2, 1)])], None),
        ("horizontal degenerate polygon", (6, 8), [("polygon", [(1, 2), (6, 2), (3, 2)])], None),
        ("duplicate and closing points", (12, 12), [("polygon", [(1, 1), (1, 1), (9, 2), (10, 10), (3, 9), (1, 1)])], None),
        ("vertex within 1e-12 of a centre", (6, 6), [("polygon", [(2 + 5e-13, 1 - 5e-13), (3.4, 3.6), (2.6, 3.6)])], None),
        ("vertex just beyond 1e-12 of a centre", (6, 6), [("polygon", [(2 + 3e-12, 1 - 3e-12), (3.4, 3.6), (2.6, 3.6)])], None),
        ("edge-touching frame borders", (10, 12), [("polygon", [(0, 0), (11, 0), (11, 9), (0, 9)])], None),
        ("partly outside the frame", (16, 16), [("polygon", [(-6.3, -4.1), (10.2, -7.5), (22.4, 9.9), (4.4, 25.0)])], None),
        ("entirely outside the frame", (8, 8), [("polygon", [(-9, -9), (-2, -9), (-5, -1)])], None),
        ("rectangle, 4 integer corners", (12, 14), [("rectangle", [(2, 3), (11, 3), (11, 9), (2, 9)])], None),
        ("rectangle, 5 points closed ring", (12, 14), [("rectangle", [(2, 3), (11, 3), (11, 9), (2, 9), (2, 3)])], None),
        ("rectangle, float corners", (12, 14), [("rectangle", [(1.6, 2.4), (10.5, 2.4), (10.5, 8.7), (1.6, 8.7)])], None),
        ("overlapping annotations, later overwrites", (20, 20),
         [("polygon", [(2, 2), (14, 2), (14, 14), (2, 14)]),
          ("polygon", [(8.5, 8.5), (18, 9), (17, 18), (9, 17.5)]),
          ("rectangle", [(5, 0), (7, 0), (7, 19), (5, 19)])], None),
        ("region crop with float corners", (24, 30),
         [("polygon", [(3, 3), (20, 4), (18, 20), (5, 18)]), ("polygon", [(15, 10), (28, 12), (25, 22)])],
         [(4.7, 2.2), (26.9, 2.2), (26.9, 21.8), (4.7, 21.8)]),
        ("region crop partly outside (clipped, not wrapped)", (24, 30),
         [("polygon", [(-2, 1), (12, 3), (9, 14)]), ("polygon", [(20, 15), (33, 18), (26, 27)])],
         [(-5.5, -3.9), (18.2, -3.9), (18.2, 30.0), (-5.5, 30.0)]),
        ("region as a polygon", (24, 30),
         [("polygon", [(3, 3), (20, 4), (18, 20), (5, 18)])],
         [(10.2, 5.9), (22.8, 8.1), (14.0, 19.3)]),
    ]


def make_goldens():
    cases = []
    for name, frame, anns, region in named_cases():
        docs = [doc(i, shape, pts) for i, (shape, pts) in enumerate(anns)]
        labels = reference_labels(frame, [pts for _, pts in anns])
        case = {"name": name, "frame": list(frame), "annotations": docs, "region": None, "expected_region": None}
        if region is not None:
            shape = "rectangle" if len(region) == 4 else "polygon"
            case["region"] = doc(len(anns), shape, region, tags=("region",))
            x0, y0, x1, y1 = reference_region(frame, region)
            case["expected_region"] = [x0, y0, x1, y1]
            labels = labels[y0:y1, x0:x1]
        case["expected"] = rle(labels)
        cases.append(case)
    return {"generator": "tools/make_rasterize_fixtures.py", "skimage": skimage.__version__, "cases": cases}


def random_polygon(rng, h, w):
    n = int(rng.integers(3, 13))
    kind = rng.choice(["float", "int", "half", "quarter"])
    if rng.random() < 0.5:
        # star-shaped (simple) around a centre, possibly reaching outside the frame
        cx, cy = rng.uniform(-3, w + 3), rng.uniform(-3, h + 3)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.3, max(h, w) / 2, n)
        xs, ys = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
    else:
        # arbitrary vertex order: mostly self-intersecting
        xs, ys = rng.uniform(-4, w + 4, n), rng.uniform(-4, h + 4, n)
    if kind == "int":
        xs, ys = np.round(xs), np.round(ys)
    elif kind == "half":
        xs, ys = np.round(xs * 2) / 2, np.round(ys * 2) / 2
    elif kind == "quarter":
        xs, ys = np.round(xs * 4) / 4, np.round(ys * 4) / 4
    return [(float(x), float(y)) for x, y in zip(xs, ys)]


def far_case(rng):
    """A polygon near a random spot of a 2048x2048 frame, kept as a crop around it: exercises the
    rounding at realistic coordinate magnitudes and the crop offset."""
    h, w = 2048, 2048
    ox, oy = int(rng.integers(-8, w - 24)), int(rng.integers(-8, h - 24))
    scale = rng.choice([1.0, 2.0, 4.0, 1024.0])  # 1024: binary fractions far below a pixel
    polygons = []
    for _ in range(int(rng.integers(1, 3))):
        local = random_polygon(rng, 32, 32)
        polygons.append([(ox + round(x * scale) / scale, oy + round(y * scale) / scale) for x, y in local])
    labels = reference_labels((h, w), polygons)
    x0, y0 = max(ox - 4, 0), max(oy - 4, 0)
    crop = [x0, y0, min(ox + 40, w), min(oy + 40, h)]
    return {
        "frame": [h, w],
        "crop": crop,
        "polygons": [[c for p in poly for c in p] for poly in polygons],
        "expected": rle(labels[crop[1]:crop[3], crop[0]:crop[2]]),
    }


def make_random(count=300, far=60):
    rng = np.random.default_rng(SEED)
    cases = [far_case(rng) for _ in range(far)]
    for _ in range(count):
        h, w = int(rng.integers(4, 33)), int(rng.integers(4, 33))
        polygons = [random_polygon(rng, h, w) for _ in range(int(rng.integers(1, 4)))]
        labels = reference_labels((h, w), polygons)
        crop = [0, 0, w, h]
        if rng.random() < 0.3:
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            crop = [x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))]
            labels = labels[crop[1]:crop[3], crop[0]:crop[2]]
        cases.append({
            "frame": [h, w],
            "crop": crop,
            "polygons": [[c for p in poly for c in p] for poly in polygons],
            "expected": rle(labels),
        })
    return {"generator": "tools/make_rasterize_fixtures.py", "skimage": skimage.__version__, "seed": SEED,
            "note": "polygons are flat [x0, y0, x1, y1, ...]; crop is [x0, y0, x1, y1] half-open",
            "cases": cases}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in [("goldens.json", make_goldens()), ("random.json", make_random())]:
        path = OUT / name
        path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        print(f"wrote {path} ({path.stat().st_size} bytes, {len(data['cases'])} cases)")


if __name__ == "__main__":
    main()
