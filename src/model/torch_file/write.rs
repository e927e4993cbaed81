//! Writing `torch.save` files that `torch.load(weights_only=True)` reads, streamed one tensor at
//! a time and renamed into place only once complete.

use std::io::{Cursor, Seek, Write};
use std::path::Path;

use super::*;
use crate::pickle;

/// Writes a state_dict the way `torch.save(state_dict, path)` does, so that
/// `torch.load(path, weights_only=True)` returns an `OrderedDict` of tensors.
/// Writes to a temporary file next to `path` and renames it, so a crash never leaves half a model.
pub fn write_state_dict(path: &Path, sd: &StateDict) -> Result<(), ModelFileError> {
    let metas: Vec<TensorMeta> = sd
        .entries
        .iter()
        .map(|(n, t)| TensorMeta { name: n.clone(), dtype: t.dtype, shape: t.shape.clone() })
        .collect();
    write_tensors(path, &metas, |i| Ok(sd.entries[i].1.data.clone()))
}

/// Name, element type and shape of a tensor to be written; its bytes come later.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

/// Streams a `torch.save` file to `path` (atomically, via a temporary file): `data(i)` gives the
/// little-endian bytes of tensor `i` when it is written, so only one tensor is in memory at a time.
pub fn write_tensors(
    path: &Path,
    metas: &[TensorMeta],
    mut data: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
) -> Result<(), ModelFileError> {
    let wrap =
        |e: std::io::Error| ModelFileError { path: path.to_path_buf(), kind: ModelFileErrorKind::Io(e) };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let file = write_archive(file, metas, &mut data)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(wrap(e));
    }
    std::fs::rename(&tmp, path).map_err(wrap)
}

/// The bytes of a `torch.save` file for `sd`.
pub fn state_dict_to_bytes(sd: &StateDict) -> std::io::Result<Vec<u8>> {
    let metas: Vec<TensorMeta> = sd
        .entries
        .iter()
        .map(|(n, t)| TensorMeta { name: n.clone(), dtype: t.dtype, shape: t.shape.clone() })
        .collect();
    tensors_to_bytes(&metas, |i| Ok(sd.entries[i].1.data.clone()))
}

/// The bytes of a `torch.save` file streamed like [`write_tensors`]: `data(i)` is asked for
/// each tensor in turn, so only the archive and one tensor's bytes are in memory at once.
///
/// The buffer is sized for the whole archive up front: grown by doubling, a 3.65 GB Cellpose-SAM
/// checkpoint would pass through a 4 GiB buffer while the 2 GiB one it is copied from still
/// lives.
pub fn tensors_to_bytes(
    metas: &[TensorMeta],
    mut data: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Vec<u8>> {
    let buffer = Vec::with_capacity(archive_size_bound(metas));
    Ok(write_archive(Cursor::new(buffer), metas, &mut data)?.into_inner())
}

/// At least the size of the archive of `metas`: the tensors' bytes, and for the pickle and each
/// zip record (headers, a zip64 extra field, alignment padding, central directory) a generous
/// allowance.
fn archive_size_bound(metas: &[TensorMeta]) -> usize {
    let tensors: usize =
        metas.iter().map(|t| t.shape.iter().product::<i64>().max(0) as usize * t.dtype.size()).sum();
    let names: usize = metas.iter().map(|t| t.name.len()).sum();
    tensors + 2 * names + 512 * (metas.len() + 4) + 4096
}

/// The `data.pkl` of a state_dict: an `OrderedDict` of `_rebuild_tensor_v2` calls whose storages
/// are the archive records `data/<i>`.
fn state_dict_pickle(metas: &[TensorMeta]) -> Vec<u8> {
    let mut p = pickle::Writer::new();
    p.global("collections", "OrderedDict");
    let od = p.put();
    p.empty_tuple();
    p.reduce();
    p.put();
    p.mark();
    let mut rebuild = None;
    let mut storage_tag = None;
    let mut storage_globals: Vec<(DType, u32)> = Vec::new();
    for (i, t) in metas.iter().enumerate() {
        p.str(&t.name);
        match rebuild {
            Some(k) => p.get(k),
            None => {
                p.global("torch._utils", "_rebuild_tensor_v2");
                rebuild = Some(p.put());
            }
        }
        p.mark();
        // persistent id: ('storage', torch.<Kind>Storage, '<key>', 'cpu', numel)
        p.mark();
        match storage_tag {
            Some(k) => p.get(k),
            None => {
                p.str("storage");
                storage_tag = Some(p.put());
            }
        }
        match storage_globals.iter().find(|(d, _)| *d == t.dtype) {
            Some((_, k)) => p.get(*k),
            None => {
                p.global("torch", t.dtype.storage_name());
                let k = p.put();
                storage_globals.push((t.dtype, k));
            }
        }
        p.str(&i.to_string());
        p.str("cpu");
        p.int(t.shape.iter().product::<i64>().max(0));
        p.tuple();
        p.binpersid();
        p.int(0);
        p.int_tuple(&t.shape);
        p.int_tuple(&contiguous_strides(&t.shape));
        p.bool(false);
        p.get(od);
        p.empty_tuple();
        p.reduce();
        p.tuple();
        p.reduce();
    }
    p.setitems();
    p.stop()
}

fn write_archive<W: Write + Seek>(
    out: W,
    metas: &[TensorMeta],
    data: &mut dyn FnMut(usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<W> {
    let pkl = state_dict_pickle(metas);
    let mut zip = zip::ZipWriter::new(out);
    // torch's reader accepts any alignment; 64 bytes matches what torch writes (and mmap loading wants).
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(metas.iter().any(|t| t.shape.iter().product::<i64>() * t.dtype.size() as i64 >= 1 << 31))
        .with_alignment(64);
    let add = |zip: &mut zip::ZipWriter<W>, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        zip.start_file(format!("archive/{name}"), opts).map_err(std::io::Error::other)?;
        zip.write_all(bytes)
    };
    add(&mut zip, "data.pkl", &pkl)?;
    add(&mut zip, "byteorder", b"little")?;
    for (i, t) in metas.iter().enumerate() {
        let bytes = data(i)?;
        let want = t.shape.iter().product::<i64>().max(0) as usize * t.dtype.size();
        if bytes.len() != want {
            return Err(std::io::Error::other(format!(
                "tensor `{}`: {} bytes for shape {:?} {:?} (needs {want})",
                t.name,
                bytes.len(),
                t.shape,
                t.dtype
            )));
        }
        add(&mut zip, &format!("data/{i}"), &bytes)?;
    }
    add(&mut zip, "version", b"3\n")?;
    zip.finish().map_err(std::io::Error::other)
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1].max(1);
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_fits_the_buffer_sized_for_it() {
        // many small tensors with long names (the worst case for the per-record allowance) and
        // one large one; every tensor one byte short of a 64-byte boundary
        let mut metas: Vec<TensorMeta> = (0..300)
            .map(|i| TensorMeta {
                name: format!("encoder.blocks.{i}.attn.relative_position_bias_table.weight"),
                dtype: DType::F32,
                shape: vec![3, 5],
            })
            .collect();
        metas.push(TensorMeta { name: "big".into(), dtype: DType::U8, shape: vec![1 << 20] });
        let sizes: Vec<usize> =
            metas.iter().map(|t| t.shape.iter().product::<i64>() as usize * t.dtype.size()).collect();
        let bytes = tensors_to_bytes(&metas, |i| Ok(vec![7u8; sizes[i]])).unwrap();
        let bound = archive_size_bound(&metas);
        assert!(bytes.len() <= bound, "{} bytes written, {bound} reserved", bytes.len());
        assert!(bound - bytes.len() < 512 * 1024, "a needlessly large buffer: {bound} for {}", bytes.len());
    }
}
