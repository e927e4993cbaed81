//! The Cellpose-SAM family (cellpose 4.2.1.1), as NimbusImage's "Cellpose-SAM retrain" tool
//! trains it: up to three input slots, `train_seg` with AdamW and its defaults (bsize 256, batch
//! 1, no rescaling), `min_train_masks=1`, models in `Private/.cellposesam/models` as fp32 files
//! that `CellposeModel(pretrained_model=path)` loads. Checkpoints hold the trained weights and
//! AdamW's moments (3.65 GB at full size; see [`crate::train::cpsam::checkpoint`]) and are
//! written every `[training] cpsam_checkpoint_every` epochs and on a shutdown.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tch::Device;

use super::{Family, Reporter, ResumePoint, TrainJob, TrainResult};
use crate::config::Settings;
use crate::evaluate::{self, ApSummary, MaskOptions};
use crate::job::error::JobError;
use crate::job::params::Field;
use crate::job::params_cpsam::{self, builtin_for, BASE_MODELS};
use crate::job::validate::{JobParams, ParamErrors};
use crate::job::validate_cpsam::validate_cpsam;
use crate::model::{open_any, registry, AnyModel, CpsamModel, ModelError, ModelFamily};
use crate::predict_cpsam::Cp4Options;
use crate::train::cpsam::checkpoint::encode as encode_checkpoint;
use crate::train::cpsam::{
    prepare_cp4, train_seg_cpsam, Cp4DataError, Cp4PrepareOptions, CpsamHooks, CpsamTrainConfig,
};
use crate::train::{EpochInfo, Example, Optimizer, RawExample, Resume, TrainError, TrainState};
use crate::transforms::Normalize;

/// The Cellpose-SAM family.
#[derive(Debug, Clone, Copy)]
pub struct Cpsam;

/// cellpose 4 takes at most three input channels.
const MAX_SLOTS: usize = 3;

/// A local file for a model on its way between bytes and the cpsam loader/writer (which stream
/// a 1.2 GB file tensor by tensor from a path); removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join("cellpose-train-worker");
        std::fs::create_dir_all(&dir)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Ok(Scratch(dir.join(format!("cpsam-{}-{n}.pth", std::process::id()))))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Family for Cpsam {
    type Net = CpsamModel;
    type Resume = Resume;

    fn kind(&self) -> ModelFamily {
        ModelFamily::Cpsam
    }

    fn root_folder(&self) -> &'static str {
        ".cellposesam"
    }

    fn fields(&self, settings: &Settings) -> Vec<Field> {
        params_cpsam::fields(settings.training.min_epochs, settings.training.max_epochs)
    }

    fn checkpoint_every(&self, settings: &Settings) -> usize {
        settings.training.cpsam_checkpoint_every
    }

    fn is_builtin(&self, name: &str) -> bool {
        builtin_for(name).is_some()
    }

    fn offered_builtins(&self, settings: &Settings) -> Vec<String> {
        // as for CPnet: a label is offered only when its weights are installed
        let dir = registry::models_dir(settings.paths.models_dir.as_deref());
        let labels: Vec<String> = BASE_MODELS
            .iter()
            .filter(|(_, b)| registry::resolve(b, &dir).is_ok())
            .map(|(l, _)| l.to_string())
            .collect();
        if labels.is_empty() {
            tracing::warn!(models_dir = %dir.display(), "no Cellpose-SAM weights installed (cpsam_v2, cpsam); offering only the user's models");
        }
        labels
    }

    fn reserves(&self, name: &str) -> bool {
        // NimbusImage routes a label to its built-in, so a same-named user model is unreachable
        self.is_builtin(name)
    }

    fn validate(
        &self,
        values: &serde_json::Value,
        settings: &Settings,
        known_model: &dyn Fn(&str) -> bool,
    ) -> Result<(JobParams, Vec<String>), ParamErrors> {
        validate_cpsam(values, &self.fields(settings), known_model)
    }

    fn load_file(&self, bytes: &[u8], origin: &str, device: Device) -> Result<CpsamModel, JobError> {
        let file = Scratch::new()?;
        std::fs::write(&file.0, bytes)?;
        CpsamModel::load(&file.0, device).map_err(|e| JobError::ModelFile(named(e, origin)))
    }

    fn load_builtin(&self, name: &str, settings: &Settings, device: Device) -> Result<CpsamModel, JobError> {
        let dir = registry::models_dir(settings.paths.models_dir.as_deref());
        let spec = builtin_for(name).unwrap_or(name);
        match open_any(spec, &dir, device)? {
            AnyModel::Cpsam(loaded) => Ok(loaded.model),
            AnyModel::Cpnet(_) => Err(JobError::ModelFile(ModelError::WrongFamily {
                origin: format!("the built-in `{spec}` in {}", dir.display()),
                found: Some(ModelFamily::Cpnet),
                wanted: ModelFamily::Cpsam,
            })),
        }
    }

    fn check_base(&self, _net: &CpsamModel, params: &JobParams) -> Result<(), JobError> {
        // every cpsam network reads three channels; validation allows no more slots than that
        if params.slots.len() > MAX_SLOTS {
            return Err(JobError::Channel(format!(
                "Cellpose-SAM reads at most {MAX_SLOTS} channels ({} chosen).",
                params.slots.len()
            )));
        }
        Ok(())
    }

    fn prepare(
        &self,
        raw: Vec<RawExample>,
        _params: &JobParams,
        validation: bool,
    ) -> Result<Vec<Example>, JobError> {
        let opts = Cp4PrepareOptions {
            normalize: Normalize::default(),
            // NimbusImage's worker passes min_train_masks=1; validation keeps every region
            min_train_masks: if validation { 0 } else { 1 },
        };
        let what = if validation { "validation regions" } else { "training samples" };
        prepare_cp4(raw, &opts).map(|p| p.examples).map_err(|e| match e {
            Cp4DataError::Data(e) => super::preparing_failed(what, e),
            e => JobError::Dataset { dataset: what.into(), detail: e.to_string() },
        })
    }

    fn resume(&self, bytes: &[u8], net: &CpsamModel) -> Result<(Resume, ResumePoint), JobError> {
        let r = crate::train::cpsam::checkpoint::load(bytes, "checkpoint", net)?;
        let at = ResumePoint { epoch: r.state.epoch, step: r.state.step };
        Ok((r, at))
    }

    fn train(&self, job: TrainJob<'_, Self>, reporter: &mut Reporter) -> Result<TrainResult, JobError> {
        let cfg = CpsamTrainConfig {
            learning_rate: job.params.learning_rate,
            weight_decay: job.params.weight_decay,
            n_epochs: job.params.epochs,
            seed: job.seed,
            device: job.device,
            // AdamW, bsize 256, batch 1, no rescaling: cellpose 4 train_seg as the reference calls it
            ..Default::default()
        };
        let mut hooks = Hooks { reporter };
        let outcome =
            train_seg_cpsam(job.net, &job.examples, None, &cfg, &mut hooks, job.control, job.resume)?;
        // no best-epoch tracking for this family yet: the last epoch is uploaded
        Ok(TrainResult { outcome, kept_epoch: None, scored: Vec::new() })
    }

    fn score(&self, net: &CpsamModel, examples: &[Example], device: Device) -> Result<ApSummary, JobError> {
        // the examples are normalised already; cpsam trains and so is scored at native scale
        let opts = Cp4Options {
            normalize: Normalize { normalize: false, ..Default::default() },
            ..Default::default()
        };
        let mut scores = Vec::with_capacity(examples.len());
        for e in examples {
            let seg = evaluate::segment_image_cp4(net, &e.image, &opts, &MaskOptions::default(), device)
                .map_err(|err| JobError::Scoring(format!("{}: {err}", e.name)))?;
            scores.push(
                evaluate::score_masks_cp4(&e.name, &e.labels, &seg.masks)
                    .map_err(|err| JobError::Scoring(format!("{}: {err}", e.name)))?,
            );
        }
        Ok(ApSummary::from_images(scores))
    }

    fn to_file(&self, net: &CpsamModel) -> Result<Bytes, JobError> {
        // fp32, in PyTorch's key order: what cellpose 4 CellposeModel(pretrained_model=) loads
        let file = Scratch::new()?;
        net.save(&file.0)?;
        Ok(Bytes::from(std::fs::read(&file.0)?))
    }
}

/// A load error about the scratch copy, told about the model the user named instead.
fn named(e: ModelError, origin: &str) -> ModelError {
    let o = origin.to_string();
    match e {
        ModelError::MissingTensor { name, .. } => ModelError::MissingTensor { origin: o, name },
        ModelError::WrongShape { name, expected, found, .. } => {
            ModelError::WrongShape { origin: o, name, expected, found }
        }
        ModelError::WrongDtype { name, found, .. } => ModelError::WrongDtype { origin: o, name, found },
        ModelError::WrongFamily { found, wanted, .. } => ModelError::WrongFamily { origin: o, found, wanted },
        other => other,
    }
}

/// The trainer's hooks for a job: per-epoch progress with ETA, and checkpoints.
struct Hooks<'a> {
    reporter: &'a mut Reporter,
}

impl CpsamHooks for Hooks<'_> {
    fn on_epoch(
        &mut self,
        e: &EpochInfo,
        model: &CpsamModel,
        optim: &Optimizer,
        state: &TrainState,
    ) -> Result<(), TrainError> {
        self.reporter.epoch(e);
        self.reporter.checkpoint_after(e, state, || encode_checkpoint(model, optim, state));
        Ok(())
    }

    fn on_interrupt(&mut self, model: &CpsamModel, optim: &Optimizer, state: &TrainState) {
        self.reporter.checkpoint(state.epoch, state.step, encode_checkpoint(model, optim, state));
    }
}
