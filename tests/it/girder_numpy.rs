//! numpy region pickles: every recorded fixture decodes to the documented values, and the
//! encoder's output is byte-for-byte what numpy 2 writes (checked with the venv's numpy).

use cellpose_train_worker::numpy::{decode_pickle, encode_pickle5, Array2};
use ndarray::{arr2, Array};

use super::helpers::{fixture, run_python};

fn read(name: &str) -> Array2 {
    decode_pickle(&std::fs::read(fixture(&format!("girder/{name}"))).unwrap()).unwrap()
}

#[test]
fn every_recorded_fixture_decodes_to_its_values() {
    assert_eq!(
        read("region_uint16_2x4x1.pickle5"),
        Array2::U16(arr2(&[[32010, 32011, 32012, 32013], [32110, 32111, 32112, 32113]]))
    );
    assert_eq!(
        read("region_uint8_3x5x1.pickle5"),
        Array2::U8(Array::from_iter((0..15u8).map(|v| 7 * v)).into_shape_with_order((3, 5)).unwrap())
    );
    let Array2::F32(f) = read("region_float32_3x4x1.pickle5") else { panic!("float32 expected") };
    let want = Array::linspace(0f32, 1.0, 12).into_shape_with_order((3, 4)).unwrap();
    assert!(f.iter().zip(want.iter()).all(|(a, b)| (a - b).abs() < 1e-7), "{f:?}");
    assert_eq!(read("region_uint16be_2x3x1.pickle5"), Array2::U16(arr2(&[[0, 1, 2], [3, 4, 5]])));
    assert_eq!(
        read("region_uint16_fortran_3x4x1.pickle5"),
        Array2::U16(Array::from_iter(0..12u16).into_shape_with_order((3, 4)).unwrap())
    );
}

#[test]
fn numpy_1_reconstructor_name_is_accepted() {
    let mut data = std::fs::read(fixture("girder/region_uint16_2x4x1.pickle5")).unwrap();
    // same length swap: `numpy._core.numeric` -> `numpy.core.numeric` needs the length byte too
    let at = data.windows(19).position(|w| w == b"numpy._core.numeric").unwrap();
    data.splice(at - 1..at + 19, [&[18u8][..], b"numpy.core.numeric"].concat());
    // FRAME length shrinks by one
    let frame = u64::from_le_bytes(data[3..11].try_into().unwrap()) - 1;
    data[3..11].copy_from_slice(&frame.to_le_bytes());
    assert_eq!(decode_pickle(&data).unwrap(), read("region_uint16_2x4x1.pickle5"));
}

#[test]
fn encoder_matches_numpy_2_byte_for_byte() {
    let cases = [
        ("uint16", 2, 4, true),
        ("uint8", 3, 5, true),
        ("float32", 3, 4, false),
        ("uint16", 181, 181, true), // just under the 64 KiB frame target
        ("uint16", 256, 300, true), // large payload written outside frames
    ];
    for (dtype, h, w, band) in cases {
        let array = match dtype {
            "uint16" => Array2::U16(Array::from_shape_fn((h, w), |(y, x)| (y * 1000 + x * 7) as u16)),
            "uint8" => Array2::U8(Array::from_shape_fn((h, w), |(y, x)| (y * 31 + x * 7) as u8)),
            _ => Array2::F32(Array::from_shape_fn((h, w), |(y, x)| y as f32 * 0.5 - x as f32)),
        };
        let code = format!(
            "import numpy as np, pickle, sys\n\
             y, x = np.mgrid[0:{h}, 0:{w}]\n\
             a = {{'uint16': (y*1000 + x*7).astype(np.uint16), 'uint8': ((y*31 + x*7) % 256).astype(np.uint8), 'float32': (y*0.5 - x).astype(np.float32)}}['{dtype}']\n\
             a = a.reshape({h}, {w}, 1) if {band} else a\n\
             sys.stdout.write(pickle.dumps(a, protocol=5).hex())",
            band = if band { "True" } else { "False" }
        );
        let want = run_python(&code, &[]);
        let got: String = encode_pickle5(&array, band).iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            got == want,
            "{dtype} {h}x{w}: encoder differs from numpy ({} vs {} hex chars)",
            got.len(),
            want.len()
        );
    }
}
