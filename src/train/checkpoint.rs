//! Resumable training checkpoints: the model's weights, the optimizer's moments and the
//! [`TrainState`], in one `torch.save`-format file (so it can also be opened in Python):
//! `model.<key>` tensors, `optim.m` / `optim.v`, and `meta` (UTF-8 JSON as a uint8 tensor).

use tch::Tensor;

use super::optim::Optimizer;
use super::trainer::TrainState;
use crate::model::torch_file::{self, DType, ModelFileError, RawTensor, StateDict};
use crate::model::{raw_to_tensor, tensor_to_raw, Model};

const FORMAT: u32 = 1;

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
    state: TrainState,
}

/// A decoded checkpoint.
pub struct Checkpoint {
    pub model: StateDict,
    pub optimizer: Vec<(String, Tensor)>,
    pub state: TrainState,
}

/// Serialises the model, optimizer state and training state.
pub fn encode(model: &Model, optim: &Optimizer, state: &TrainState) -> std::io::Result<Vec<u8>> {
    let mut entries: Vec<(String, RawTensor)> =
        model.state_dict().entries.into_iter().map(|(k, t)| (format!("model.{k}"), t)).collect();
    for (k, t) in optim.state_tensors() {
        entries.push((format!("optim.{k}"), tensor_to_raw(&t)));
    }
    let meta =
        serde_json::to_vec(&Meta { format: FORMAT, state: state.clone() }).map_err(std::io::Error::other)?;
    entries.push(("meta".into(), RawTensor { dtype: DType::U8, shape: vec![meta.len() as i64], data: meta }));
    torch_file::state_dict_to_bytes(&StateDict { entries })
}

/// Parses bytes written by [`encode`].
pub fn decode(bytes: &[u8], origin: &str) -> Result<Checkpoint, CheckpointError> {
    let sd = torch_file::read_state_dict_bytes(bytes, origin)?;
    let meta =
        sd.get("meta").ok_or_else(|| CheckpointError::Invalid(format!("{origin}: no `meta` entry")))?;
    let meta: Meta = serde_json::from_slice(&meta.data)
        .map_err(|e| CheckpointError::Invalid(format!("{origin}: bad meta: {e}")))?;
    if meta.format != FORMAT {
        return Err(CheckpointError::Invalid(format!(
            "{origin}: format {} (this worker reads {FORMAT})",
            meta.format
        )));
    }
    let mut model = Vec::new();
    let mut optimizer = Vec::new();
    for (k, t) in sd.entries {
        if let Some(name) = k.strip_prefix("model.") {
            model.push((name.to_string(), t));
        } else if let Some(name) = k.strip_prefix("optim.") {
            optimizer.push((name.to_string(), raw_to_tensor(&t)));
        }
    }
    Ok(Checkpoint { model: StateDict { entries: model }, optimizer, state: meta.state })
}
