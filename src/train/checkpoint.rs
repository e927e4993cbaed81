//! Resumable training checkpoints of both families: weights, the optimizer's moments and the
//! [`TrainState`], in one `torch.save`-format file (so it can also be opened in Python):
//! `meta` first (UTF-8 JSON as a uint8 tensor: format, family, state), then `model.<key>`
//! tensors, then `optim.m` / `optim.v`.
//!
//! Why meta first: a reader streams the tensors in file order and so knows the family before it
//! inflates 3.6 GB of a Cellpose-SAM checkpoint into the wrong network. Files written before the
//! family was recorded (CPnet only) have `meta` last and no family; they still load as CPnet.
//!
//! What `model.*` holds is the family's choice: CPnet keeps its whole state_dict (buffers
//! included; with the SGD momentum about 53 MB for cyto3); Cellpose-SAM only the tensors AdamW updates (see
//! [`super::cpsam::checkpoint`]), in fp32 like the moments, so a resumed run equals an
//! uninterrupted one bit for bit.

use tch::Tensor;

use super::optim::Optimizer;
use super::state::{Resume, TrainState};
use crate::model::torch_file::{self, DType, ModelFileError, RawTensor, StateDict, TensorMeta};
use crate::model::{raw_to_tensor, tensor_to_raw, Model, ModelFamily};

const FORMAT: u32 = 1;

/// Most bytes a checkpoint's tensors may inflate to: a model's worth of weights and two of
/// moments (Cellpose-SAM: 3 x 1.2 GB), plus room for the metadata.
pub(crate) const MAX_CHECKPOINT_BYTES: u64 = 3 * torch_file::MAX_MODEL_BYTES + (64 << 20);

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("checkpoint: {0}")]
    Invalid(String),
    /// Its weights do not fit the model being trained (another architecture or channel count).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    /// [`ModelFamily::name`] of the network trained; absent in CPnet checkpoints of before.
    #[serde(default)]
    family: Option<String>,
    state: TrainState,
}

/// One tensor of a checkpoint on its way to the file: already bytes (a state_dict) or a live
/// tensor copied out only when the writer reaches it.
pub enum Entry {
    Raw(RawTensor),
    Live(Tensor),
}

impl Entry {
    fn meta(&self, name: String) -> TensorMeta {
        match self {
            Entry::Raw(t) => TensorMeta { name, dtype: t.dtype, shape: t.shape.clone() },
            // live tensors are weights and moments: written fp32 whatever they are held in
            Entry::Live(t) => TensorMeta { name, dtype: DType::F32, shape: t.size() },
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Entry::Raw(t) => t.data.clone(),
            Entry::Live(t) => tensor_to_raw(&t.to_kind(tch::Kind::Float)).data,
        }
    }
}

/// Serialises `model` entries (named without the `model.` prefix), the optimizer's moments
/// and `state` for `family`, one tensor in memory besides the archive at a time.
pub(crate) fn encode_entries(
    family: ModelFamily,
    model: Vec<(String, Entry)>,
    optim: &Optimizer,
    state: &TrainState,
) -> std::io::Result<Vec<u8>> {
    let meta = Meta { format: FORMAT, family: Some(family.name().to_string()), state: state.clone() };
    let meta = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
    let mut entries = vec![(
        "meta".to_string(),
        Entry::Raw(RawTensor { dtype: DType::U8, shape: vec![meta.len() as i64], data: meta }),
    )];
    entries.extend(model.into_iter().map(|(k, t)| (format!("model.{k}"), t)));
    entries.extend(optim.state_tensors().into_iter().map(|(k, t)| (format!("optim.{k}"), Entry::Live(t))));
    let metas: Vec<TensorMeta> = entries.iter().map(|(n, e)| e.meta(n.clone())).collect();
    torch_file::tensors_to_bytes(&metas, |i| Ok(entries[i].1.bytes()))
}

/// A CPnet checkpoint: the whole state_dict as weights.
pub fn encode(model: &Model, optim: &Optimizer, state: &TrainState) -> std::io::Result<Vec<u8>> {
    let entries = model.state_dict().entries.into_iter().map(|(k, t)| (k, Entry::Raw(t))).collect();
    encode_entries(ModelFamily::Cpnet, entries, optim, state)
}

/// What a checkpoint tensor is, by its name.
pub enum Part<'a> {
    /// A weight, named as in the model (without `model.`).
    Model(&'a str),
    /// An optimizer buffer (`m`, `v`).
    Optim(&'a str),
}

/// Streams a checkpoint of `wanted` family to `f`, tensor by tensor, and returns its state.
/// Refuses one of another family, format or without `meta` before `f` sees any tensor.
pub(crate) fn decode_with(
    bytes: &[u8],
    origin: &str,
    wanted: ModelFamily,
    mut f: impl FnMut(Part<'_>, RawTensor) -> Result<(), CheckpointError>,
) -> Result<TrainState, CheckpointError> {
    let mut meta: Option<Meta> = None;
    // entries ahead of `meta` (files of before, where it came last): held until it is read
    let mut pending: Vec<(String, RawTensor)> = Vec::new();
    let mut dispatch = |name: &str, t: RawTensor| -> Result<(), CheckpointError> {
        if let Some(n) = name.strip_prefix("model.") {
            f(Part::Model(n), t)
        } else if let Some(n) = name.strip_prefix("optim.") {
            f(Part::Optim(n), t)
        } else {
            Ok(())
        }
    };
    torch_file::for_each_tensor_in_bytes(bytes, origin, MAX_CHECKPOINT_BYTES, |name, t| {
        if name == "meta" {
            meta = Some(read_meta(&t, origin, wanted)?);
            for (n, t) in pending.drain(..) {
                dispatch(&n, t)?;
            }
            Ok(())
        } else if meta.is_some() {
            dispatch(&name, t)
        } else {
            pending.push((name, t));
            Ok(())
        }
    })?;
    let meta = meta.ok_or_else(|| CheckpointError::Invalid(format!("{origin}: no `meta` entry")))?;
    Ok(meta.state)
}

fn read_meta(t: &RawTensor, origin: &str, wanted: ModelFamily) -> Result<Meta, CheckpointError> {
    let meta: Meta = serde_json::from_slice(&t.data)
        .map_err(|e| CheckpointError::Invalid(format!("{origin}: bad meta: {e}")))?;
    if meta.format != FORMAT {
        return Err(CheckpointError::Invalid(format!(
            "{origin}: format {} (this worker reads {FORMAT})",
            meta.format
        )));
    }
    let family = meta.family.as_deref().unwrap_or(ModelFamily::Cpnet.name());
    if family != wanted.name() {
        return Err(CheckpointError::Invalid(format!(
            "{origin} is a checkpoint of a {family} model, not of the {} being trained; \
             the job must start over from its base model",
            wanted.describe()
        )));
    }
    Ok(meta)
}

/// A decoded CPnet checkpoint.
pub struct Checkpoint {
    pub model: StateDict,
    pub optimizer: Vec<(String, Tensor)>,
    pub state: TrainState,
}

/// Parses a CPnet checkpoint written by [`encode`].
pub fn decode(bytes: &[u8], origin: &str) -> Result<Checkpoint, CheckpointError> {
    let mut model = Vec::new();
    let mut optimizer = Vec::new();
    let state = decode_with(bytes, origin, ModelFamily::Cpnet, |part, t| {
        match part {
            Part::Model(name) => model.push((name.to_string(), t)),
            Part::Optim(name) => optimizer.push((
                name.to_string(),
                raw_to_tensor(&t)
                    .map_err(|e| CheckpointError::Invalid(format!("{origin}: `optim.{name}`: {e}")))?,
            )),
        }
        Ok(())
    })?;
    Ok(Checkpoint { model: StateDict { entries: model }, optimizer, state })
}

impl Resume {
    /// Reads a CPnet checkpoint written by [`encode`], loads its weights into `model` and returns
    /// the state to continue from. `origin` names the bytes in errors.
    pub fn load(bytes: &[u8], origin: &str, model: &Model) -> Result<Resume, CheckpointError> {
        let ck = decode(bytes, origin)?;
        model.copy_from(&ck.model, origin)?;
        Ok(Resume { state: ck.state, optimizer_state: ck.optimizer })
    }
}
