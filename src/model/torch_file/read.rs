//! Reading `torch.save` files: the zip archive, the allow-listed pickle, and each tensor's view
//! checked against its storage and the file budget before anything is allocated.

use std::collections::HashSet;
use std::io::{Cursor, Read, Seek};
use std::path::Path;

use super::*;
use crate::pickle::{self, Allowed, Value};

/// The only globals a state_dict pickle may name: containers and tensor rebuilders, as
/// `torch.load(weights_only=True)` allows.
fn allowed_globals() -> Allowed {
    let mut names: Vec<(&str, &str)> = vec![
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("builtins", "dict"),
    ];
    names.extend(DType::ALL.iter().map(|d| ("torch", d.storage_name())));
    Allowed::new(names)
}

/// Reads a state_dict from a file written by `torch.save` (torch 1.6 or newer).
pub fn read_state_dict(path: &Path) -> Result<StateDict, ModelFileError> {
    let wrap = |kind| ModelFileError { path: path.to_path_buf(), kind };
    let len = std::fs::metadata(path).map_err(|e| wrap(ModelFileErrorKind::Io(e)))?.len();
    if len > MAX_MODEL_BYTES {
        return Err(wrap(ModelFileErrorKind::TooLarge { what: "the file".into(), bytes: len }));
    }
    let mut entries = Vec::new();
    for_each_tensor(path, |name, t| {
        entries.push((name, t));
        Ok::<(), ModelFileError>(())
    })?;
    Ok(StateDict { entries })
}

/// Reads a state_dict from bytes (a download, say); `origin` names them in errors.
pub fn read_state_dict_bytes(bytes: &[u8], origin: &str) -> Result<StateDict, ModelFileError> {
    let wrap = |kind| ModelFileError { path: PathBuf::from(origin), kind };
    check_magic(bytes, bytes.len() as u64).map_err(wrap)?;
    let mut entries = Vec::new();
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| wrap(ModelFileErrorKind::Zip(e.to_string())))?;
    visit_tensors(&mut zip, MAX_MODEL_BYTES, |name, t| {
        entries.push((name, t));
        Ok(())
    })
    .map_err(|e: VisitError<std::convert::Infallible>| match e {
        VisitError::File(kind) => wrap(kind),
        VisitError::Visitor(never) => match never {},
    })?;
    Ok(StateDict { entries })
}

/// Streams the tensors of a `torch.save` file to `f` in file order, one at a time, reading the
/// archive from disk: a 1.2 GB cellpose 4 model is never held twice (the caller copies each
/// tensor where it belongs and drops it). An error from `f` stops the walk and is returned.
pub fn for_each_tensor<E, F>(path: &Path, f: F) -> Result<(), E>
where
    E: From<ModelFileError>,
    F: FnMut(String, RawTensor) -> Result<(), E>,
{
    let wrap = |kind| ModelFileError { path: path.to_path_buf(), kind };
    let mut zip = open_archive(path).map_err(|k| E::from(wrap(k)))?;
    visit_tensors(&mut zip, MAX_MODEL_BYTES, f).map_err(|e| match e {
        VisitError::File(kind) => E::from(wrap(kind)),
        VisitError::Visitor(e) => e,
    })
}

/// [`for_each_tensor`] over bytes in memory (a downloaded checkpoint), with `limit` bytes for
/// all storages together: each tensor is handed over and can be dropped before the next is
/// inflated, so a 3.6 GB Cellpose-SAM checkpoint is not held twice.
pub fn for_each_tensor_in_bytes<E, F>(bytes: &[u8], origin: &str, limit: u64, f: F) -> Result<(), E>
where
    E: From<ModelFileError>,
    F: FnMut(String, RawTensor) -> Result<(), E>,
{
    let wrap = |kind| ModelFileError { path: PathBuf::from(origin), kind };
    check_magic(bytes, bytes.len() as u64).map_err(|k| E::from(wrap(k)))?;
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| E::from(wrap(ModelFileErrorKind::Zip(e.to_string()))))?;
    visit_tensors(&mut zip, limit, f).map_err(|e| match e {
        VisitError::File(kind) => E::from(wrap(kind)),
        VisitError::Visitor(e) => e,
    })
}

/// Names, element types and shapes in file order, from `data.pkl` alone (no tensor data is
/// read): enough to tell a model's family and size its network before loading it.
pub fn read_tensor_metas(path: &Path) -> Result<Vec<TensorMeta>, ModelFileError> {
    use ModelFileErrorKind as K;
    let wrap = |kind| ModelFileError { path: path.to_path_buf(), kind };
    let mut zip = open_archive(path).map_err(wrap)?;
    let (_, _, items) = read_root(&mut zip).map_err(wrap)?;
    let mut metas = Vec::with_capacity(items.len());
    for (k, v) in &items {
        let name = k
            .as_str()
            .ok_or_else(|| wrap(K::NotStateDict(format!("a key is a {}, not a name", k.type_name()))))?;
        let (dtype, shape) =
            tensor_header(v).map_err(|detail| wrap(K::BadTensor { name: name.to_string(), detail }))?;
        metas.push(TensorMeta { name: name.to_string(), dtype, shape });
    }
    Ok(metas)
}

/// Element type and shape of a pickled `_rebuild_tensor_v2` / `_rebuild_parameter` call.
fn tensor_header(value: &Value) -> Result<(DType, Vec<i64>), String> {
    let Value::Call(call) = value else {
        return Err(format!("is a {}, not a tensor", value.type_name()));
    };
    let call = call.borrow();
    if call.func.name == "_rebuild_parameter" {
        return tensor_header(call.args.first().ok_or("parameter without data")?);
    }
    if call.func.name != "_rebuild_tensor_v2" || call.args.len() < 4 {
        return Err(format!("built by {} with {} arguments, not a plain tensor", call.func, call.args.len()));
    }
    let Value::PersistentId(pid) = &call.args[0] else {
        return Err("tensor has no storage reference".into());
    };
    let pid = pid.as_seq().ok_or("storage reference is not a tuple")?;
    let dtype = match pid.as_slice() {
        [Value::Str(tag), Value::Global(g), _key, _location, _numel] if tag == "storage" => {
            DType::from_storage_name(&g.name).ok_or_else(|| format!("unsupported storage type {g}"))?
        }
        _ => return Err("storage reference has an unexpected layout".into()),
    };
    let shape = call.args[2].as_int_seq().ok_or("size is not a tuple of ints")?;
    Ok((dtype, shape))
}

enum VisitError<E> {
    File(ModelFileErrorKind),
    Visitor(E),
}

fn open_archive(
    path: &Path,
) -> Result<zip::ZipArchive<std::io::BufReader<std::fs::File>>, ModelFileErrorKind> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut head = Vec::with_capacity(10);
    (&file).take(10).read_to_end(&mut head)?;
    check_magic(&head, len)?;
    let mut reader = std::io::BufReader::new(file);
    reader.seek(std::io::SeekFrom::Start(0))?;
    zip::ZipArchive::new(reader).map_err(|e| ModelFileErrorKind::Zip(e.to_string()))
}

/// Tells a torch.save zip from the legacy format, an empty file or an error page.
fn check_magic(head: &[u8], len: u64) -> Result<(), ModelFileErrorKind> {
    use ModelFileErrorKind as K;
    if head.starts_with(b"PK\x03\x04") {
        return Ok(());
    }
    // torch < 1.6 wrote a bare pickle starting with the magic number 0x1950a86a20f9469cfc6c
    if head.starts_with(&[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46]) {
        return Err(K::Legacy);
    }
    let what = if len == 0 {
        "an empty file".to_string()
    } else if head.starts_with(b"<") || head.starts_with(b"{") {
        "text (an HTML/JSON error page saved as a model?)".to_string()
    } else {
        format!("{len} bytes starting {:02x?}", &head[..head.len().min(4)])
    };
    Err(K::NotZip(what))
}

type RootItems = Vec<(Value, Value)>;

/// Locates `data.pkl`, reads the byte order and unpickles the top-level dict.
fn read_root<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
) -> Result<(String, bool, RootItems), ModelFileErrorKind> {
    use ModelFileErrorKind as K;
    let pkl_name = zip
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or(K::NoDataPkl)?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let big_endian = match read_entry(zip, &format!("{prefix}byteorder"), MAX_RECORD_BYTES) {
        Ok(b) => b.trim_ascii() == b"big",
        Err(_) => false, // files before torch 2.1 have no byteorder record: little-endian
    };
    let pkl = read_entry(zip, &pkl_name, MAX_RECORD_BYTES)?;
    let root = pickle::read(&pkl, &allowed_globals())?;
    let Value::Dict(items) = root else {
        return Err(K::NotStateDict(format!(
            "the top-level object is a {}, not a dict of tensors",
            root.type_name()
        )));
    };
    let items = items.borrow().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok((prefix, big_endian, items))
}

fn visit_tensors<R: Read + Seek, E>(
    zip: &mut zip::ZipArchive<R>,
    limit: u64,
    mut f: impl FnMut(String, RawTensor) -> Result<(), E>,
) -> Result<(), VisitError<E>> {
    use ModelFileErrorKind as K;
    let (prefix, big_endian, items) = read_root(zip).map_err(VisitError::File)?;
    let mut budget = Budget { left: limit, seen: HashSet::new() };
    for (key, value) in &items {
        let name = key.as_str().ok_or_else(|| {
            VisitError::File(K::NotStateDict(format!("a key is a {}, not a name", key.type_name())))
        })?;
        let t = rebuild_tensor(value, zip, &prefix, big_endian, &mut budget)
            .map_err(|detail| VisitError::File(K::BadTensor { name: name.to_string(), detail }))?;
        f(name.to_string(), t).map_err(VisitError::Visitor)?;
    }
    Ok(())
}

/// What the storages of one file may still inflate to; a storage shared by several tensors
/// counts once.
struct Budget {
    left: u64,
    seen: HashSet<String>,
}

/// Reads one record, inflating at most `max` bytes: a record that inflates past that (a deflate
/// bomb, or a header that lies) is an error before it fills memory.
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    max: u64,
) -> Result<Vec<u8>, ModelFileErrorKind> {
    let f = zip.by_name(name).map_err(|e| ModelFileErrorKind::Zip(format!("{name}: {e}")))?;
    // the declared size is a claim: reserve no more than the cap
    let mut buf = Vec::with_capacity(f.size().min(max).min(MAX_RECORD_BYTES) as usize);
    f.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| ModelFileErrorKind::Zip(format!("{name}: {e}")))?;
    if buf.len() as u64 > max {
        return Err(ModelFileErrorKind::Inflates { name: name.to_string(), max });
    }
    Ok(buf)
}

/// Checks a `_rebuild_tensor_v2` view against its storage before anything is allocated and
/// returns the element count. Why: the size, stride and offset are the writer's claims; a
/// 1 KB file with size 2^40 and stride 0 would otherwise make us allocate 4 TB and abort.
fn check_view(
    shape: &[i64],
    stride: &[i64],
    offset: i64,
    storage_numel: i64,
    esize: usize,
) -> Result<usize, String> {
    if shape.len() != stride.len()
        || shape.iter().any(|&s| s < 0)
        || stride.iter().any(|&s| s < 0)
        || offset < 0
    {
        return Err(format!("inconsistent size {shape:?} / stride {stride:?} / offset {offset}"));
    }
    let too_big = || format!("size {shape:?} has more elements than any model holds");
    let numel = shape.iter().try_fold(1i64, |acc, &s| acc.checked_mul(s)).ok_or_else(too_big)?;
    if numel == 0 {
        return Ok(0);
    }
    let bytes = (numel as u64).checked_mul(esize as u64).ok_or_else(too_big)?;
    if bytes > MAX_MODEL_BYTES {
        return Err(format!(
            "size {shape:?} needs {bytes} bytes, more than any model file may hold ({MAX_MODEL_BYTES}); the file is damaged or crafted"
        ));
    }
    if numel > storage_numel {
        return Err(format!(
            "size {shape:?} has {numel} elements but its storage holds {storage_numel} \
             (stride {stride:?} repeats elements); a state_dict stores every element, so the file is damaged or crafted"
        ));
    }
    let last = shape
        .iter()
        .zip(stride)
        .try_fold(offset, |acc, (&n, &s)| acc.checked_add((n - 1).checked_mul(s)?))
        .ok_or_else(too_big)?;
    if last >= storage_numel {
        return Err(format!(
            "the view (offset {offset}, size {shape:?}, stride {stride:?}) reaches element {last} of a storage of {storage_numel}"
        ));
    }
    Ok(numel as usize)
}

/// Interprets `_rebuild_tensor_v2(storage, offset, size, stride, ...)` and copies the viewed
/// elements out of the storage record into a contiguous buffer.
fn rebuild_tensor<R: Read + Seek>(
    value: &Value,
    zip: &mut zip::ZipArchive<R>,
    prefix: &str,
    big_endian: bool,
    budget: &mut Budget,
) -> Result<RawTensor, String> {
    let Value::Call(call) = value else {
        return Err(format!(
            "is a {}, not a tensor (nested dicts and other objects are not model weights)",
            value.type_name()
        ));
    };
    let call = call.borrow();
    if call.func.name == "_rebuild_parameter" {
        let inner = call.args.first().ok_or("parameter without data")?;
        return rebuild_tensor(inner, zip, prefix, big_endian, budget);
    }
    if call.func.name != "_rebuild_tensor_v2" || call.args.len() < 4 {
        return Err(format!("built by {} with {} arguments, not a plain tensor", call.func, call.args.len()));
    }
    let Value::PersistentId(pid) = &call.args[0] else {
        return Err("tensor has no storage reference".into());
    };
    let pid = pid.as_seq().ok_or("storage reference is not a tuple")?;
    let (dtype, key, storage_numel) = match pid.as_slice() {
        [Value::Str(tag), Value::Global(g), Value::Str(key), _location, numel] if tag == "storage" => {
            let dtype =
                DType::from_storage_name(&g.name).ok_or_else(|| format!("unsupported storage type {g}"))?;
            let numel = numel.as_int().filter(|n| *n >= 0).ok_or("storage size is not a count")?;
            (dtype, key.clone(), numel)
        }
        _ => return Err("storage reference has an unexpected layout".into()),
    };
    let offset = call.args[1].as_int().ok_or("storage offset is not an int")?;
    let shape = call.args[2].as_int_seq().ok_or("size is not a tuple of ints")?;
    let stride = call.args[3].as_int_seq().ok_or("stride is not a tuple of ints")?;
    let esize = dtype.size();
    let numel = check_view(&shape, &stride, offset, storage_numel, esize)?;
    let storage_bytes = (storage_numel as u64).saturating_mul(esize as u64);
    if budget.seen.insert(key.clone()) {
        if storage_bytes > budget.left {
            return Err(format!(
                "storage {key} declares {storage_bytes} bytes, more than a model file may hold ({MAX_MODEL_BYTES} in all); the file is damaged or crafted"
            ));
        }
        budget.left -= storage_bytes;
    }
    let storage = read_entry(zip, &format!("{prefix}data/{key}"), storage_bytes)
        .map_err(|e| format!("storage {key}: {e}"))?;
    let mut data = Vec::with_capacity(numel * esize);
    let mut index = vec![0i64; shape.len()];
    for _ in 0..numel {
        let elem = offset + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<i64>();
        let start = usize::try_from(elem).map_err(|_| "negative element offset")? * esize;
        let bytes = storage.get(start..start + esize).ok_or_else(|| {
            format!("storage {key} has {} bytes, the view needs byte {}", storage.len(), start + esize)
        })?;
        if big_endian {
            data.extend(bytes.iter().rev());
        } else {
            data.extend_from_slice(bytes);
        }
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(RawTensor { dtype, shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_broadcast_view_larger_than_its_storage_is_refused_before_allocating() {
        // the crafted file of issue #14: size 2^40, stride 0, one stored float
        let err = check_view(&[1 << 40], &[0], 0, 1, 4).unwrap_err();
        assert!(err.contains("more than any model file may hold"), "{err}");
        let err = check_view(&[1000], &[0], 0, 1, 4).unwrap_err();
        assert!(err.contains("storage holds 1"), "{err}");
        let err = check_view(&[i64::MAX, 4], &[1, 1], 0, 1, 4).unwrap_err();
        assert!(err.contains("more elements than any model holds"), "{err}");
    }

    #[test]
    fn a_view_past_the_end_of_its_storage_is_refused() {
        assert_eq!(check_view(&[2, 3], &[3, 1], 0, 6, 4), Ok(6));
        assert_eq!(check_view(&[0, 3], &[3, 1], 0, 0, 4), Ok(0));
        let err = check_view(&[2, 3], &[3, 1], 1, 6, 4).unwrap_err();
        assert!(err.contains("reaches element 6"), "{err}");
        assert!(check_view(&[2], &[-1], 1, 6, 4).is_err());
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_cap() {
        let mut out = Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let opts =
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("archive/data/0", opts).unwrap();
        zip.write_all(&vec![0u8; 8 << 20]).unwrap();
        zip.finish().unwrap();
        let bytes = out.into_inner();
        assert!(bytes.len() < 64 << 10, "a bomb: {} bytes", bytes.len());
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let err = read_entry(&mut zip, "archive/data/0", 1024).unwrap_err();
        assert!(matches!(err, ModelFileErrorKind::Inflates { max: 1024, .. }), "{err}");
        assert_eq!(read_entry(&mut zip, "archive/data/0", 8 << 20).unwrap().len(), 8 << 20);
    }
}
