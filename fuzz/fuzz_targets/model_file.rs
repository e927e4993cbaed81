//! The model-file reader (`torch.save` zip + pickle, src/model/torch_file) on arbitrary bytes,
//! and, for what it accepts, the CPnet built from its shapes and weights: any input must give a
//! value or an error, never a panic, an abort or an allocation the limits do not allow.
//!
//! Mutated zip archives mostly fail their CRC checks, so half the inputs (first byte odd) are
//! used as the `data.pkl` of a well-formed archive with four storages: the tensor headers, views,
//! strides and storage bounds then get the fuzzer's attention.
#![no_main]

use std::io::Write;

use cellpose_train_worker::model::{torch_file, Model};
use libfuzzer_sys::fuzz_target;

fn archive(pickle: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let storages: [(&str, Vec<u8>); 4] =
        [("0", vec![0; 4]), ("1", vec![1; 64]), ("2", vec![2; 4096]), ("3", (0..=255).collect())];
    let mut entries: Vec<(String, &[u8])> = vec![
        ("archive/data.pkl".into(), pickle),
        ("archive/byteorder".into(), b"little"),
        ("archive/version".into(), b"3\n"),
    ];
    for (k, v) in &storages {
        entries.push((format!("archive/data/{k}"), v));
    }
    for (name, bytes) in entries {
        if zip.start_file(name, opts).is_err() || zip.write_all(bytes).is_err() {
            return Vec::new();
        }
    }
    let _ = zip.finish();
    out.into_inner()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let file = if mode % 2 == 1 { archive(rest) } else { rest.to_vec() };
    let Ok(sd) = torch_file::read_state_dict_bytes(&file, "fuzz") else { return };
    let _ = Model::from_state_dict(&sd, tch::Device::Cpu, "fuzz");
    let _ = torch_file::for_each_tensor_in_bytes(&file, "fuzz", 64 << 20, |_name, _raw| {
        Ok::<(), torch_file::ModelFileError>(())
    });
});
