//! Every TIFF layout tifffile writes and the reader decodes reads as tifffile reads it; the rest
//! is refused by name (issue 26: tifffile's default layout for a (3, H, W) float32 array, one
//! page of separate planes, crashed predict/segment/train). Fixtures: tools/make_tiff_layouts.py.

use std::collections::BTreeMap;
use std::path::Path;

use cellpose_train_worker::imageio;
use ndarray::Array3;
use ndarray_npy::read_npy;
use serde_json::Value;

use crate::helpers::{fixture, run_python, tempdir};

/// tifffile's pages as `[C, H, W]` float64 .npy files, one per readable fixture: each page's
/// samples in turn (planar pages are `[S, H, W]` already, interleaved ones `[H, W, S]`).
const TIFFFILE_READ: &str = r#"
import json, pathlib, sys
import numpy as np, tifffile
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for name, what in json.loads((src / "manifest.json").read_text()).items():
    if what != "read":
        continue
    chans = []
    with tifffile.TiffFile(src / name) as t:
        for p in t.pages:
            a = p.asarray()
            if p.samplesperpixel > 1 and p.planarconfig != 2:
                a = np.moveaxis(a, -1, 0)
            chans.append(a if a.ndim == 3 else a[None])
    np.save(out / (name + ".npy"), np.concatenate(chans).astype(np.float64))
"#;

fn manifest(dir: &Path) -> BTreeMap<String, Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn every_layout_reads_as_tifffile_reads_it() {
    let dir = fixture("tiff_layouts");
    let out = tempdir();
    run_python(TIFFFILE_READ, &[dir.to_str().unwrap(), out.path().to_str().unwrap()]);
    let (mut read, mut wrong) = (0, Vec::new());
    for (name, what) in manifest(&dir) {
        if what != "read" {
            continue;
        }
        let theirs: Array3<f64> = read_npy(out.path().join(format!("{name}.npy"))).unwrap();
        // every layout is tried (one panic must not hide the others' results)
        let ours = std::panic::catch_unwind(|| imageio::read_image(&dir.join(&name)));
        match ours {
            Err(_) => wrong.push(format!("{name}: panicked")),
            Ok(Err(e)) => wrong.push(format!("{name}: {e}")),
            Ok(Ok(ours)) if ours.dim() != theirs.dim() => {
                wrong.push(format!("{name}: shape {:?}, tifffile {:?}", ours.dim(), theirs.dim()))
            }
            Ok(Ok(ours)) => {
                let differ = ours.iter().zip(theirs.iter()).filter(|(a, b)| **a != **b as f32).count();
                if differ > 0 {
                    wrong.push(format!("{name}: {differ} of {} values differ from tifffile's", ours.len()));
                }
            }
        }
        read += 1;
    }
    assert!(
        wrong.is_empty(),
        "{} of {read} layouts not read as tifffile reads them:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(read >= 30, "only {read} layouts read");
}

#[test]
fn label_images_in_any_integer_layout_read_as_tifffile_reads_them() {
    let dir = fixture("tiff_layouts");
    let out = tempdir();
    run_python(TIFFFILE_READ, &[dir.to_str().unwrap(), out.path().to_str().unwrap()]);
    for name in
        ["gray_uint8.tif", "gray_uint16.tif", "gray_uint32.tif", "gray_bool_1bit.tif", "tiled_uint16.tif"]
    {
        let theirs: Array3<f64> = read_npy(out.path().join(format!("{name}.npy"))).unwrap();
        let ours = imageio::read_labels(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = theirs.index_axis(ndarray::Axis(0), 0).mapv(|v| v as u32);
        assert_eq!(ours, theirs, "{name}");
    }
    let e = imageio::read_labels(&dir.join("gray_int8.tif")).unwrap_err().to_string();
    assert!(e.contains("gray_int8.tif") && e.contains("negative value"), "{e}");
    let e = imageio::read_labels(&dir.join("planar_3_float32.tif")).unwrap_err().to_string();
    assert!(e.contains("3 channels"), "{e}");
}

#[test]
fn stacks_and_unsupported_compression_are_refused_by_name() {
    let dir = fixture("tiff_layouts");
    let mut refused = 0;
    for (name, what) in manifest(&dir) {
        let Some(needle) = what.get("refused").and_then(Value::as_str) else { continue };
        let e = imageio::read_image(&dir.join(&name)).err().unwrap_or_else(|| panic!("{name} was read"));
        let m = e.to_string();
        assert!(m.contains(&name), "{name}: {m}");
        assert!(m.contains(needle), "{name}: `{needle}` missing from: {m}");
        refused += 1;
    }
    assert_eq!(refused, 7);
}

/// A TIFF header claiming a 40000 x 40000 16-bit page (3.2 GB) over 16 bytes of data.
fn huge_header() -> Vec<u8> {
    let (w, h): (u32, u32) = (40_000, 40_000);
    let mut b = b"II*\0".to_vec();
    b.extend(8u32.to_le_bytes());
    let entries: [(u16, u16, u32); 8] = [
        (256, 4, w),                  // ImageWidth
        (257, 4, h),                  // ImageLength
        (258, 3, 16),                 // BitsPerSample
        (259, 3, 1),                  // Compression: none
        (262, 3, 1),                  // PhotometricInterpretation: min-is-black
        (273, 4, 8 + 2 + 8 * 12 + 4), // StripOffsets: right after the IFD
        (278, 4, h),                  // RowsPerStrip
        (279, 4, w * h * 2),          // StripByteCounts
    ];
    b.extend((entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        b.extend(tag.to_le_bytes());
        b.extend(kind.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        match kind {
            3 => b.extend((value as u16).to_le_bytes().into_iter().chain([0, 0])),
            _ => b.extend(value.to_le_bytes()),
        }
    }
    b.extend(0u32.to_le_bytes());
    b.extend([0u8; 16]);
    b
}

#[test]
fn a_huge_image_is_refused_from_its_header_naming_the_file_size_and_limit() {
    let dir = tempdir();
    let path = dir.path().join("huge.tif");
    std::fs::write(&path, huge_header()).unwrap();
    let m = imageio::read_image(&path).unwrap_err().to_string();
    for needle in ["huge.tif", "40000x40000 pixels", "1600000000 samples", "the limit is 268435456 samples"] {
        assert!(m.contains(needle), "`{needle}` missing from: {m}");
    }
}
