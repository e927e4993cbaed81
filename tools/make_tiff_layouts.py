"""Small TIFFs written by tifffile in every layout the worker's reader (the `tiff` crate) decodes,
and in a few it must refuse clearly, for tests/it/tiff_layouts.rs.

Readable layouts: one page or several; samples interleaved (PlanarConfiguration 1) or in separate
planes (2, tifffile's default for a (3, H, W) or (4, H, W) array); strips or tiles (sizes that are
not multiples of the tile); uint8/16/32/64, int8/16/32/64, float16/32/64, 1-bit; deflate, LZW
and PackBits compression with predictors; BigTIFF and big-endian; palette and min-is-white.
Refused: zstd compression (not built into the reader), min-is-white floats, ImageJ and tifffile hyperstacks and an
OME-TIFF with Z > 1 (a stack read as channels would be silently wrong).

The test reads every file with tifffile at test time and compares, so these files carry no
expected values; `manifest.json` lists each file and whether it must read or be refused.

Run: .venv/bin/python tools/make_tiff_layouts.py
"""

import json
import pathlib

import numpy as np
import tifffile

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiff_layouts"
SEED = 20261205
H, W = 13, 20  # not square, not a multiple of 8 or 16: catches transposes and padding
TH, TW = 20, 35  # tiled images: 2 x 3 tiles of 16 x 16, the last row and column partial


def values(rng, dtype, shape):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
        return rng.integers(lo, hi, shape, dtype=np.int64 if dtype.kind == "i" else np.uint64).astype(dtype)
    return (rng.standard_normal(shape) * 1000).astype(dtype)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.tif"):
        old.unlink()
    rng = np.random.default_rng(SEED)
    manifest = {}

    def ok(name, data, **kw):
        tifffile.imwrite(OUT / name, data, **kw)
        manifest[name] = "read"

    def refused(name, data, needle, **kw):
        tifffile.imwrite(OUT / name, data, **kw)
        manifest[name] = {"refused": needle}

    for dt in ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]:
        ok(f"gray_{dt}.tif", values(rng, dt, (H, W)))
    ok("gray_bool_1bit.tif", values(rng, bool, (H, W)))
    # the crash of issue 26: tifffile's default for (3, H, W) is one page, separate planes
    ok("planar_3_float32.tif", values(rng, "float32", (3, H, W)))
    ok("planar_4_uint16.tif", values(rng, "uint16", (4, H, W)))
    ok("planar_2_uint8.tif", values(rng, "uint8", (2, H, W)), photometric="minisblack", planarconfig="separate")
    ok("contig_rgb_uint8.tif", values(rng, "uint8", (H, W, 3)))
    ok("contig_rgba_uint16.tif", values(rng, "uint16", (H, W, 4)), photometric="rgb", extrasamples=["unassalpha"])
    ok("contig_2_float32.tif", values(rng, "float32", (H, W, 2)), photometric="minisblack", planarconfig="contig")
    ok("pages_2_uint16.tif", values(rng, "uint16", (2, H, W)))
    ok("pages_rgb_uint8.tif", values(rng, "uint8", (2, H, W, 3)))
    ok("strips_3_rows_uint16.tif", values(rng, "uint16", (H, W)), rowsperstrip=3)
    ok("tiled_uint16.tif", values(rng, "uint16", (TH, TW)), tile=(16, 16))
    ok("tiled_planar_3_uint16.tif", values(rng, "uint16", (3, TH, TW)), tile=(16, 16))
    ok("tiled_contig_rgb_uint8.tif", values(rng, "uint8", (TH, TW, 3)), tile=(16, 16))
    ok("tiled_pages_2_float32.tif", values(rng, "float32", (2, TH, TW)), tile=(16, 16))
    ok("deflate_predictor_uint16.tif", values(rng, "uint16", (H, W)), compression="zlib", predictor=True)
    ok("deflate_planar_3_float32.tif", values(rng, "float32", (3, H, W)), compression="zlib")
    ok("lzw_predictor_uint8.tif", values(rng, "uint8", (2, H, W)), compression="lzw", predictor=True)
    ok("packbits_uint8.tif", values(rng, "uint8", (H, W)), compression="packbits")
    ok("bigtiff_uint16.tif", values(rng, "uint16", (2, H, W)), bigtiff=True)
    ok("bigendian_float32.tif", values(rng, "float32", (3, H, W)), byteorder=">")
    ok("miniswhite_uint8.tif", values(rng, "uint8", (H, W)), photometric="miniswhite")
    ok("miniswhite_uint16.tif", values(rng, "uint16", (H, W)), photometric="miniswhite")
    # channel-only multi-dimensional files are read as channels
    ok("imagej_channels_uint16.tif", values(rng, "uint16", (3, H, W)), imagej=True, metadata={"axes": "CYX"})
    ok("ome_channels_uint16.tif", values(rng, "uint16", (2, H, W)), ome=True, metadata={"axes": "CYX"})

    refused("zstd_uint16.tif", values(rng, "uint16", (H, W)), "compression", compression="zstd")
    # the decoder inverts min-is-white floats as 1 - v, which cannot be undone exactly
    refused("miniswhite_float32.tif", values(rng, "float32", (H, W)), "min-is-white", photometric="miniswhite")
    tzcyx = values(rng, "uint16", (2, 2, 2, H, W))
    refused("imagej_hyperstack_tzcyx.tif", tzcyx, "ImageJ hyperstack", imagej=True, metadata={"axes": "TZCYX"})
    refused("tifffile_tzcyx.tif", tzcyx, "TZCYX", metadata={"axes": "TZCYX"})
    # pages of planar RGB without axis names: two planes per channel, a stack of some kind
    refused("pages_planar_rgb_uint8.tif", values(rng, "uint8", (2, 3, H, W)), "4-D array", photometric="rgb", planarconfig="separate")
    # the tiff crate decodes no palette (indexed-colour) images
    colormap = rng.integers(0, 65535, (3, 256), dtype=np.uint16)
    refused("palette_uint8.tif", values(rng, "uint8", (H, W)), "RGBPalette", photometric="palette", colormap=colormap)
    refused("ome_zcyx.tif", values(rng, "uint16", (3, 2, H, W)), "OME-TIFF", ome=True, metadata={"axes": "ZCYX"})

    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.glob("*.tif"))
    print(f"wrote {len(manifest)} files ({total} bytes) to {OUT}")


if __name__ == "__main__":
    main()
