//! PyTorch `torch.save` files (state_dicts), read and written without Python.
//!
//! Why not tch: `VarStore::save` writes TorchScript archives that `torch.load(weights_only=True)`
//! refuses, and `Tensor::loadz_multi` cannot read cellpose's pickled `OrderedDict`. The format is
//! a zip archive (`<name>/data.pkl`, `<name>/data/<key>` raw storages, `<name>/version`, ...) whose
//! pickle references storages by key. `<name>` is whatever the writer chose (`archive`, the file
//! stem, ...), so we locate `data.pkl` rather than assume a folder.

mod read;
mod write;

use std::path::PathBuf;

pub use read::{
    for_each_tensor, for_each_tensor_in_bytes, read_state_dict, read_state_dict_bytes, read_tensor_metas,
};
pub use write::{state_dict_to_bytes, tensors_to_bytes, write_state_dict, write_tensors, TensorMeta};

use crate::pickle;

/// Most bytes a model file may hold or inflate to: a sane bound over the largest real model
/// (Cellpose-SAM, ~1.2 GB of float32 weights). Why: sizes in a file are the writer's claims; a
/// crafted 1 KB file can claim a 4 TB tensor or a deflate bomb, and an allocation that large
/// aborts the process (no error, no JSON line) instead of failing.
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Most bytes `data.pkl` and the small records (`version`, `byteorder`) may inflate to; real
/// ones are a few hundred KB.
const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Element type of a stored tensor, as named by its torch storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    fn storage_name(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    const ALL: [DType; 10] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::Bool,
    ];

    fn from_storage_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.storage_name() == name)
    }
}

/// A dense, C-contiguous, little-endian tensor as stored in a model file.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<i64>().max(0) as usize
    }
}

/// An ordered `name -> tensor` map, the shape of every cellpose model file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    pub entries: Vec<(String, RawTensor)>,
}

impl StateDict {
    pub fn get(&self, name: &str) -> Option<&RawTensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ModelFileError {
    pub path: PathBuf,
    pub kind: ModelFileErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelFileErrorKind {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PyTorch model file (expected a zip archive written by torch.save; got {0})")]
    NotZip(String),
    #[error(
        "written in the legacy format of torch < 1.6; load it in Python and save it again with a newer torch"
    )]
    Legacy,
    #[error("the zip archive is damaged or truncated ({0}); copy or download the file again")]
    Zip(String),
    #[error("the archive has no data.pkl, so it is not a torch.save file")]
    NoDataPkl,
    #[error("bad pickle in data.pkl: {0}")]
    Pickle(#[from] pickle::PickleError),
    #[error("not a state_dict: {0}")]
    NotStateDict(String),
    #[error("tensor `{name}`: {detail}")]
    BadTensor { name: String, detail: String },
    #[error(
        "{what} is {bytes} bytes, more than any model file may hold ({} bytes); the file is damaged or crafted",
        MAX_MODEL_BYTES
    )]
    TooLarge { what: String, bytes: u64 },
    #[error(
        "record {name} inflates to more than the {max} bytes it may hold (a deflate bomb or a damaged file)"
    )]
    Inflates { name: String, max: u64 },
}
