//! The pickle reader (src/pickle) with the globals model files and numpy regions allow, and the
//! numpy region decoder built on it (src/numpy.rs), on arbitrary bytes.
#![no_main]

use cellpose_train_worker::{numpy, pickle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let allowed = pickle::Allowed::new([
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "FloatStorage"),
        ("torch", "LongStorage"),
        ("builtins", "dict"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    ]);
    let _ = pickle::read(data, &allowed);
    let _ = numpy::decode_pickle(data);
});
