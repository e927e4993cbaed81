//! A small reader for the `.npy` golden fixtures (numpy format versions 1-3, little-endian,
//! C order): floats come back as f32, integers and booleans as u32.
#![allow(dead_code)]

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

/// The array's element type as numpy wrote it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    F2,
    F4,
    F8,
    U1,
    U2,
    U4,
    I4,
    I8,
    B1,
}

impl Dtype {
    fn parse(descr: &str) -> Dtype {
        match descr {
            "<f2" => Dtype::F2,
            "<f4" => Dtype::F4,
            "<f8" => Dtype::F8,
            "|u1" => Dtype::U1,
            "<u2" => Dtype::U2,
            "<u4" => Dtype::U4,
            "<i4" => Dtype::I4,
            "<i8" => Dtype::I8,
            "|b1" => Dtype::B1,
            other => panic!("npy dtype {other} is not supported by the test reader"),
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::U1 | Dtype::B1 => 1,
            Dtype::F2 | Dtype::U2 => 2,
            Dtype::F4 | Dtype::U4 | Dtype::I4 => 4,
            Dtype::F8 | Dtype::I8 => 8,
        }
    }

    /// Element `b` (little-endian bytes) as f64; exact for every supported type.
    fn value(self, b: &[u8]) -> f64 {
        match self {
            Dtype::F2 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
            Dtype::F4 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::F8 => f64::from_le_bytes(b.try_into().expect("8 bytes")),
            Dtype::U1 | Dtype::B1 => b[0] as f64,
            Dtype::U2 => u16::from_le_bytes([b[0], b[1]]) as f64,
            Dtype::U4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::I4 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::I8 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64,
        }
    }
}

/// Reads a fixture as f64 values with its shape.
pub fn read(path: &Path) -> ArrayD<f64> {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run tools/make_dynamics_fixtures.py)", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}: not an npy file", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("ascii header");
    let field = |key: &str| -> &str {
        let at = header.find(key).unwrap_or_else(|| panic!("{}: no {key} in header", path.display()));
        &header[at + key.len()..]
    };
    let descr = field("'descr':").trim_start().trim_start_matches('\'');
    let dtype = Dtype::parse(&descr[..descr.find('\'').expect("quoted descr")]);
    assert!(field("'fortran_order':").trim_start().starts_with("False"), "{}: Fortran order", path.display());
    let shape_src = field("'shape':");
    let shape_src = &shape_src[shape_src.find('(').expect("(") + 1..shape_src.find(')').expect(")")];
    let shape: Vec<usize> = shape_src
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("dim"))
        .collect();
    let data = &bytes[start + header_len..];
    let n: usize = shape.iter().product();
    assert_eq!(data.len(), n * dtype.size(), "{}: truncated data", path.display());
    let values: Vec<f64> = data.chunks_exact(dtype.size()).map(|b| dtype.value(b)).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), values).expect("shape matches data")
}

/// Reads a floating-point fixture as f32 (float16/32 exactly; float64 rounded).
pub fn read_f32(path: &Path) -> ArrayD<f32> {
    read(path).mapv(|v| v as f32)
}

/// Reads an integer label fixture as u32.
pub fn read_u32(path: &Path) -> ArrayD<u32> {
    read(path).mapv(|v| {
        assert!(v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64, "not a label value: {v}");
        v as u32
    })
}
