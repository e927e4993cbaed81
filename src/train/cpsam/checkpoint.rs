//! Cellpose-SAM checkpoints: only what training changes.
//!
//! A full-size cpsam has 304,628,930 parameters; AdamW updates 304,394,432 of them (all but the
//! patch embedding, which takes no gradient in cellpose 4, and the `diam_*`/`W2` buffers, which
//! training sets from the data or never changes). A checkpoint holds those weights and AdamW's
//! two moments, all fp32: 3 x 1.218 GB = 3.65 GB. The untrained rest comes from the job's base
//! model, which a resuming worker loads anyway. The moments are two thirds of it and stay fp32:
//! bf16 moments would halve them but make a resumed run differ from an uninterrupted one.

use std::collections::{HashMap, HashSet};

use tch::Tensor;

use super::trainer::trained_parameters;
use crate::model::cpsam::copy_checked;
use crate::model::torch_file::DType;
use crate::model::{raw_to_tensor, CpsamModel, ModelError, ModelFamily};
use crate::train::checkpoint::{self, CheckpointError, Entry, Part};
use crate::train::optim::Optimizer;
use crate::train::state::{Resume, TrainState};

/// Serialises the trained weights of `model`, the optimizer's moments and `state`.
pub fn encode(model: &CpsamModel, optim: &Optimizer, state: &TrainState) -> std::io::Result<Vec<u8>> {
    let entries = trained_parameters(model).into_iter().map(|(k, t)| (k, Entry::Live(t))).collect();
    checkpoint::encode_entries(ModelFamily::Cpsam, entries, optim, state)
}

/// Reads a checkpoint written by [`encode`], copies its weights into `model` (the job's base
/// model, loaded afresh) tensor by tensor, and returns where to continue. `origin` names the
/// bytes in errors.
pub fn load(bytes: &[u8], origin: &str, model: &CpsamModel) -> Result<Resume, CheckpointError> {
    let trained: HashMap<String, Tensor> = trained_parameters(model).into_iter().collect();
    let mut seen = HashSet::new();
    let mut optimizer_state = Vec::new();
    let state = checkpoint::decode_with(bytes, origin, ModelFamily::Cpsam, |part, raw| {
        match part {
            Part::Model(name) => {
                let var = trained.get(name).ok_or_else(|| {
                    CheckpointError::Invalid(format!(
                        "{origin}: `model.{name}` is not a trained tensor of this network \
                             (a checkpoint of another Cellpose-SAM architecture?)"
                    ))
                })?;
                copy_checked(var, &raw, origin, name, |d| d == DType::F32)?;
                seen.insert(name.to_string());
            }
            Part::Optim(name) => optimizer_state.push((
                name.to_string(),
                raw_to_tensor(&raw)
                    .map_err(|e| CheckpointError::Invalid(format!("{origin}: `optim.{name}`: {e}")))?,
            )),
        }
        Ok(())
    })?;
    let mut missing: Vec<&String> = trained.keys().filter(|k| !seen.contains(*k)).collect();
    missing.sort();
    if let Some(name) = missing.first() {
        return Err(ModelError::MissingTensor { origin: origin.to_string(), name: name.to_string() }.into());
    }
    Ok(Resume { state, optimizer_state })
}
