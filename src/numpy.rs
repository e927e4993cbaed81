//! numpy arrays inside pickles: what large_image's `encoding=pickle:5` region responses carry.
//!
//! Decoding goes through [`crate::pickle::read`] with an allow-list of exactly the globals a numpy
//! array pickle names (`_frombuffer` under both its numpy 1 and numpy 2 module names, `dtype`, and
//! the older `_reconstruct`/`ndarray` pair), so a hostile server cannot make us construct anything
//! else. The result is a typed 2-D array: uint8, uint16 or float32, either byte order, C or
//! Fortran order, shape `(H, W)` or `(H, W, 1)`.
//!
//! Encoding (used by the mock Girder) writes protocol 5 byte-for-byte as numpy 2 with CPython's
//! C pickler does, framing included, so the mock's region responses are the real thing.

use std::rc::Rc;

use ndarray::ShapeBuilder;

use crate::pickle::{self, Allowed, PickleError, Value};

/// A 2-D single-band image in one of the dtypes large_image serves.
#[derive(Debug, Clone, PartialEq)]
pub enum Array2 {
    U8(ndarray::Array2<u8>),
    U16(ndarray::Array2<u16>),
    F32(ndarray::Array2<f32>),
}

/// Element type of an [`Array2`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    U8,
    U16,
    F32,
}

impl Dtype {
    /// numpy's type code without byte order (`u1`, `u2`, `f4`).
    pub fn code(self) -> &'static str {
        match self {
            Dtype::U8 => "u1",
            Dtype::U16 => "u2",
            Dtype::F32 => "f4",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::U16 => 2,
            Dtype::F32 => 4,
        }
    }

    fn from_code(code: &str) -> Option<Dtype> {
        match code {
            "u1" | "B" => Some(Dtype::U8),
            "u2" | "H" => Some(Dtype::U16),
            "f4" | "f" => Some(Dtype::F32),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::U8 => "uint8",
            Dtype::U16 => "uint16",
            Dtype::F32 => "float32",
        })
    }
}

impl Array2 {
    /// `(height, width)`.
    pub fn dim(&self) -> (usize, usize) {
        match self {
            Array2::U8(a) => a.dim(),
            Array2::U16(a) => a.dim(),
            Array2::F32(a) => a.dim(),
        }
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            Array2::U8(_) => Dtype::U8,
            Array2::U16(_) => Dtype::U16,
            Array2::F32(_) => Dtype::F32,
        }
    }

    /// The values as float32 (exact for uint8 and uint16).
    pub fn to_f32(&self) -> ndarray::Array2<f32> {
        match self {
            Array2::U8(a) => a.mapv(f32::from),
            Array2::U16(a) => a.mapv(f32::from),
            Array2::F32(a) => a.clone(),
        }
    }

    /// Little-endian bytes in row-major (C) order.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Array2::U8(a) => a.iter().copied().collect(),
            Array2::U16(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Array2::F32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Why a pickle did not decode into an [`Array2`].
#[derive(Debug, thiserror::Error)]
pub enum NumpyError {
    #[error("the region response is not a safe numpy pickle: {0}")]
    Pickle(#[from] PickleError),
    #[error("the pickle holds a {0}, not a numpy array")]
    NotAnArray(String),
    #[error("malformed numpy pickle: {0}")]
    Malformed(String),
    #[error("numpy dtype `{0}` is not supported (expected uint8, uint16 or float32)")]
    UnsupportedDtype(String),
    #[error("numpy array has shape {0:?}; expected (H, W) or (H, W, 1), a single band")]
    UnsupportedShape(Vec<i64>),
    #[error("numpy array of shape {shape:?} and dtype {dtype} needs {expected} bytes but the pickle holds {actual}")]
    DataSize { shape: Vec<i64>, dtype: Dtype, expected: usize, actual: usize },
}

/// The globals a numpy array pickle may name; everything else is refused by the reader.
fn allowed() -> Allowed {
    Allowed::new([
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
    ])
}

/// Decodes `pickle.dumps(ndarray)` (protocol 2 to 5, in-band buffers) into a 2-D array.
pub fn decode_pickle(data: &[u8]) -> Result<Array2, NumpyError> {
    let value = pickle::read(data, &allowed())?;
    let Value::Call(call) = &value else {
        return Err(NumpyError::NotAnArray(value.type_name().to_string()));
    };
    let call = call.borrow();
    match call.func.name.as_str() {
        "_frombuffer" => {
            // numpy 2 `ndarray.__reduce_ex__(5)`: _frombuffer(buffer, dtype, shape, order)
            let [buf, dtype, shape, order] = call.args.as_slice() else {
                return Err(NumpyError::Malformed(format!(
                    "_frombuffer takes 4 arguments, got {}",
                    call.args.len()
                )));
            };
            let bytes = as_bytes(buf)?;
            let (dtype, little) = parse_dtype(dtype)?;
            let shape = shape
                .as_int_seq()
                .ok_or_else(|| NumpyError::Malformed("shape is not a tuple of ints".into()))?;
            let fortran = match order.as_str() {
                Some("C") => false,
                Some("F") => true,
                _ => return Err(NumpyError::Malformed("order is neither 'C' nor 'F'".into())),
            };
            build(&bytes, dtype, little, &shape, fortran)
        }
        "_reconstruct" => {
            // `ndarray.__reduce__`: _reconstruct(ndarray, (0,), b'b') then BUILD
            // (version, shape, dtype, is_fortran, raw bytes)
            let state =
                call.state.as_ref().ok_or_else(|| NumpyError::Malformed("array without state".into()))?;
            let items =
                state.as_seq().ok_or_else(|| NumpyError::Malformed("array state is not a tuple".into()))?;
            let [_, shape, dtype, fortran, raw] = items.as_slice() else {
                return Err(NumpyError::Malformed(format!(
                    "array state has {} fields, expected 5",
                    items.len()
                )));
            };
            let shape = shape
                .as_int_seq()
                .ok_or_else(|| NumpyError::Malformed("shape is not a tuple of ints".into()))?;
            let (dtype, little) = parse_dtype(dtype)?;
            let fortran =
                fortran.as_int().ok_or_else(|| NumpyError::Malformed("is_fortran is not a bool".into()))?;
            let bytes = as_bytes(raw)?;
            build(&bytes, dtype, little, &shape, fortran != 0)
        }
        other => Err(NumpyError::NotAnArray(format!("call of {other}"))),
    }
}

fn as_bytes(v: &Value) -> Result<Rc<Vec<u8>>, NumpyError> {
    match v {
        Value::Bytes(b) => Ok(b.clone()),
        other => Err(NumpyError::Malformed(format!("array data is a {}, not bytes", other.type_name()))),
    }
}

/// `numpy.dtype(code, False, True)` with BUILD state `(3, byteorder, ...)` -> (dtype, little-endian).
fn parse_dtype(v: &Value) -> Result<(Dtype, bool), NumpyError> {
    let Value::Call(call) = v else {
        return Err(NumpyError::Malformed(format!("dtype is a {}", v.type_name())));
    };
    let call = call.borrow();
    if call.func.name != "dtype" {
        return Err(NumpyError::Malformed(format!("dtype is built by {}", call.func)));
    }
    let code = call
        .args
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| NumpyError::Malformed("dtype code".into()))?;
    // A code may carry its own byte order ("<u2"); the BUILD state's byte order wins when present.
    let (mut order, bare) = match code.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &code[1..]),
        _ => ('=', code),
    };
    if let Some(state) = call.state.as_ref().and_then(Value::as_seq) {
        if let Some(o) = state.get(1).and_then(Value::as_str).and_then(|s| s.chars().next()) {
            order = o;
        }
    }
    let dtype = Dtype::from_code(bare).ok_or_else(|| NumpyError::UnsupportedDtype(code.to_string()))?;
    let little = match order {
        '>' => false,
        '<' | '|' => true,
        _ => cfg!(target_endian = "little"),
    };
    Ok((dtype, little))
}

fn build(
    bytes: &[u8],
    dtype: Dtype,
    little: bool,
    shape: &[i64],
    fortran: bool,
) -> Result<Array2, NumpyError> {
    let (h, w) = match shape {
        [h, w] | [h, w, 1] if *h >= 0 && *w >= 0 => (*h as usize, *w as usize),
        _ => return Err(NumpyError::UnsupportedShape(shape.to_vec())),
    };
    let expected = h.checked_mul(w).and_then(|n| n.checked_mul(dtype.size()));
    if expected != Some(bytes.len()) {
        return Err(NumpyError::DataSize {
            shape: shape.to_vec(),
            dtype,
            expected: expected.unwrap_or(usize::MAX),
            actual: bytes.len(),
        });
    }
    // With a trailing axis of 1 the Fortran layout of (H, W, 1) equals that of (H, W).
    let shape2 = (h, w).set_f(fortran);
    let err = |e: ndarray::ShapeError| NumpyError::Malformed(e.to_string());
    let array = match dtype {
        Dtype::U8 => Array2::U8(ndarray::Array2::from_shape_vec(shape2, bytes.to_vec()).map_err(err)?),
        Dtype::U16 => {
            let v =
                bytes
                    .chunks_exact(2)
                    .map(|c| {
                        if little {
                            u16::from_le_bytes([c[0], c[1]])
                        } else {
                            u16::from_be_bytes([c[0], c[1]])
                        }
                    })
                    .collect();
            Array2::U16(ndarray::Array2::from_shape_vec(shape2, v).map_err(err)?)
        }
        Dtype::F32 => {
            let v = bytes
                .chunks_exact(4)
                .map(|c| {
                    let b = [c[0], c[1], c[2], c[3]];
                    if little {
                        f32::from_le_bytes(b)
                    } else {
                        f32::from_be_bytes(b)
                    }
                })
                .collect();
            Array2::F32(ndarray::Array2::from_shape_vec(shape2, v).map_err(err)?)
        }
    };
    Ok(standard_layout(array))
}

fn standard_layout(a: Array2) -> Array2 {
    match a {
        Array2::U8(a) => Array2::U8(a.as_standard_layout().into_owned()),
        Array2::U16(a) => Array2::U16(a.as_standard_layout().into_owned()),
        Array2::F32(a) => Array2::F32(a.as_standard_layout().into_owned()),
    }
}

/// Pickles an array as `pickle.dumps(arr, protocol=5)` does under numpy 2 and CPython: the
/// `_frombuffer` reduction, an in-band `BYTEARRAY8`, memoization and framing exactly as the C
/// pickler writes them. `band_axis` appends a trailing axis of 1, the `(H, W, 1)` shape of
/// large_image's region arrays.
pub fn encode_pickle5(array: &Array2, band_axis: bool) -> Vec<u8> {
    let (h, w) = array.dim();
    let mut p = Framed::default();
    p.global("numpy._core.numeric", "_frombuffer");
    p.write(b"(");
    p.bytearray8(&array.to_le_bytes());
    p.memoize();
    p.boundary();
    // numpy.dtype(code, False, True) with BUILD state (3, byteorder, None, None, None, -1, -1, 0)
    p.global("numpy", "dtype");
    p.str(array.dtype().code());
    p.write(&[0x89, 0x88, 0x87]); // NEWFALSE NEWTRUE TUPLE3
    p.memoize();
    p.write(b"R");
    p.memoize();
    p.write(b"(");
    p.int(3);
    p.str(if array.dtype() == Dtype::U8 { "|" } else { "<" });
    p.write(b"NNN");
    p.int(-1);
    p.int(-1);
    p.int(0);
    p.write(b"t");
    p.memoize();
    p.write(b"b");
    p.int(h as i64);
    p.int(w as i64);
    if band_axis {
        p.int(1);
        p.write(&[0x87]); // TUPLE3
    } else {
        p.write(&[0x86]); // TUPLE2
    }
    p.memoize();
    p.str("C");
    p.write(b"t");
    p.memoize();
    p.write(b"R");
    p.memoize();
    p.write(b".");
    p.finish()
}

/// CPython's pickle framing: opcodes collect in a frame that is emitted behind a `FRAME` header
/// (only when it holds at least 4 bytes); a frame is closed at an object boundary once it reaches
/// 64 KiB, and a payload of 64 KiB or more bypasses framing altogether.
#[derive(Default)]
struct Framed {
    out: Vec<u8>,
    frame: Vec<u8>,
    started: bool,
}

const FRAME_SIZE_TARGET: usize = 64 * 1024;

impl Framed {
    fn write(&mut self, b: &[u8]) {
        if !self.started {
            self.out.extend_from_slice(&[0x80, 5]); // PROTO 5 precedes the first frame
            self.started = true;
        }
        self.frame.extend_from_slice(b);
    }
    fn commit(&mut self) {
        if self.frame.len() >= 4 {
            self.out.push(0x95);
            self.out.extend_from_slice(&(self.frame.len() as u64).to_le_bytes());
        }
        self.out.append(&mut self.frame);
    }
    fn boundary(&mut self) {
        if self.frame.len() >= FRAME_SIZE_TARGET {
            self.commit();
        }
    }
    fn memoize(&mut self) {
        self.write(&[0x94]);
    }
    fn str(&mut self, s: &str) {
        // every string here is shorter than 256 bytes: SHORT_BINUNICODE
        self.write(&[0x8c, s.len() as u8]);
        self.write(s.as_bytes());
        self.memoize();
    }
    fn global(&mut self, module: &str, name: &str) {
        self.str(module);
        self.str(name);
        self.write(&[0x93]);
        self.memoize();
    }
    fn int(&mut self, v: i64) {
        match v {
            0..=0xff => self.write(&[b'K', v as u8]),
            0x100..=0xffff => {
                self.write(b"M");
                self.write(&(v as u16).to_le_bytes());
            }
            _ => {
                self.write(b"J");
                self.write(&(v as i32).to_le_bytes());
            }
        }
    }
    fn bytearray8(&mut self, data: &[u8]) {
        let mut header = vec![0x96];
        header.extend_from_slice(&(data.len() as u64).to_le_bytes());
        if data.len() >= FRAME_SIZE_TARGET {
            self.commit();
            self.out.extend_from_slice(&header);
            self.out.extend_from_slice(data);
        } else {
            self.write(&header);
            self.write(data);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        self.commit();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_is_read_column_major() {
        // arange(6).reshape(2, 3) stored Fortran-ordered: columns first
        let bytes: Vec<u8> = [0u16, 3, 1, 4, 2, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = build(&bytes, Dtype::U16, true, &[2, 3, 1], true).unwrap();
        assert_eq!(a, Array2::U16(ndarray::arr2(&[[0, 1, 2], [3, 4, 5]])));
    }

    #[test]
    fn three_bands_are_refused_with_the_shape_named() {
        let err = build(&[0; 12], Dtype::U8, true, &[2, 2, 3], false).unwrap_err();
        assert!(err.to_string().contains("[2, 2, 3]"), "{err}");
    }

    #[test]
    fn short_data_is_a_size_error_not_a_panic() {
        let err = build(&[0; 7], Dtype::U16, true, &[2, 2], false).unwrap_err();
        assert!(matches!(err, NumpyError::DataSize { expected: 8, actual: 7, .. }), "{err}");
    }

    #[test]
    fn a_pickle_naming_os_system_is_refused() {
        let data = b"\x80\x05\x95\x0f\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93.";
        let err = decode_pickle(data).unwrap_err();
        assert!(matches!(err, NumpyError::Pickle(PickleError::DisallowedGlobal(_))), "{err}");
    }

    #[test]
    fn encoder_output_decodes_to_the_same_array() {
        let a = Array2::U16(ndarray::arr2(&[[1, 2, 300], [4, 65535, 6]]));
        assert_eq!(decode_pickle(&encode_pickle5(&a, true)).unwrap(), a);
        let f = Array2::F32(ndarray::arr2(&[[0.5, -1.0]]));
        assert_eq!(decode_pickle(&encode_pickle5(&f, false)).unwrap(), f);
    }
}
