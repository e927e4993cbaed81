//! The TIFF reader (src/imageio) on arbitrary bytes: every layout the `tiff` crate decodes, the
//! size limits from the header, the hyperstack check of the description.
#![no_main]

use cellpose_train_worker::imageio;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imageio::decode_tiff_image(data, "fuzz.tif");
});
