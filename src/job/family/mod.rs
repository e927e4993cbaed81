//! The seam between the job's stages and a model family: what a stage needs to know about the
//! network it trains (how to load a base, prepare examples, train, score, and write the file
//! Python loads) and where the family's files live in Girder. The stages are generic over
//! [`Family`]; CPnet (cellpose 3) implements it in [`cpnet`], Cellpose-SAM (cellpose 4) in
//! [`cpsam`].

pub mod cpnet;
pub mod cpsam;

use std::sync::Arc;

use bytes::Bytes;
use tch::Device;

use super::error::JobError;
use super::events::{Events, JobEvent};
use super::params::Field;
use super::validate::{JobParams, ParamErrors};
use crate::config::Settings;
use crate::control::Control;
use crate::evaluate::ApSummary;
use crate::model::ModelFamily;
use crate::report::ScoredEpoch;
use crate::train::{EpochInfo, Example, RawExample, TrainOutcome, TrainState};

pub use cpnet::Cpnet;
pub use cpsam::Cpsam;

/// A failed preparation of the job's crops, in the job's words: the library's advice for an
/// empty set (`--min-train-masks`) names a CLI flag a NimbusImage user cannot set.
pub(crate) fn preparing_failed(what: &str, e: crate::train::data::DataError) -> JobError {
    let detail = match e {
        crate::train::data::DataError::NothingLeft { total, detail, .. } => format!(
            "none of the {total} {what} has an annotated cell left to train on ({detail}); annotate cells \
             with the Training Tag inside each Training Region, or draw the regions around annotated cells"
        ),
        e => e.to_string(),
    };
    JobError::Dataset { dataset: what.into(), detail }
}

/// A model family as the job's stages see it.
pub trait Family: Clone + Send + Sync + 'static {
    /// The loaded network (moved to the training thread and back).
    type Net: Send + 'static;
    /// A resume point decoded from a checkpoint, applied by [`Family::train`].
    type Resume: Send + 'static;

    fn kind(&self) -> ModelFamily;
    /// The folder under the user's `Private` that holds this family's models, reports and
    /// checkpoints (`.cellpose` for CPnet: what NimbusImage's segmentation worker lists).
    fn root_folder(&self) -> &'static str;
    /// The tool's interface fields, with the deployment's epoch limits.
    fn fields(&self, settings: &Settings) -> Vec<Field>;
    /// Epochs between resumable checkpoints.
    fn checkpoint_every(&self, settings: &Settings) -> usize {
        settings.training.checkpoint_every
    }
    /// Names the base-model field accepts besides the user's own models.
    fn is_builtin(&self, name: &str) -> bool;
    /// Built-ins to offer in the interface (those whose weights are installed).
    fn offered_builtins(&self, settings: &Settings) -> Vec<String>;
    /// Whether `name` always means the built-in, so a user model of that name is never listed
    /// nor loaded (Cellpose-SAM's reserved labels); CPnet lets the user's model win.
    fn reserves(&self, _name: &str) -> bool {
        false
    }
    /// The interface values -> checked parameters and warnings; `known_model` says whether a
    /// Base Model exists. The default is the CPnet tool's fields (Primary/Secondary Channel).
    fn validate(
        &self,
        values: &serde_json::Value,
        settings: &Settings,
        known_model: &dyn Fn(&str) -> bool,
    ) -> Result<(JobParams, Vec<String>), ParamErrors> {
        super::validate::validate(values, &self.fields(settings), known_model)
    }

    /// A user's model file (`origin` names it in errors).
    fn load_file(&self, bytes: &[u8], origin: &str, device: Device) -> Result<Self::Net, JobError>;
    /// A built-in model by name.
    fn load_builtin(&self, name: &str, settings: &Settings, device: Device) -> Result<Self::Net, JobError>;
    /// Checks that the base model can be trained with these parameters (channels in and out).
    fn check_base(&self, net: &Self::Net, params: &JobParams) -> Result<(), JobError>;

    /// Raw crops -> examples in the family's channel layout and normalisation; `validation`
    /// keeps images without masks out of nothing (they are scored, not trained on).
    fn prepare(
        &self,
        raw: Vec<RawExample>,
        params: &JobParams,
        validation: bool,
    ) -> Result<Vec<Example>, JobError>;

    /// Decodes a checkpoint of this family into `net` (weights) and the returned resume point.
    fn resume(&self, bytes: &[u8], net: &Self::Net) -> Result<(Self::Resume, ResumePoint), JobError>;

    /// Trains `net` in place (blocking; runs on the blocking pool) with this family's
    /// `train_seg` semantics and the job's parameters, reporting to `reporter` and stopping as
    /// `control` says.
    fn train(&self, job: TrainJob<'_, Self>, reporter: &mut Reporter) -> Result<TrainResult, JobError>
    where
        Self: Sized;

    /// AP of `net` on the validation examples (blocking).
    fn score(&self, net: &Self::Net, examples: &[Example], device: Device) -> Result<ApSummary, JobError>;

    /// The model file, as the family's Python loads it.
    fn to_file(&self, net: &Self::Net) -> Result<Bytes, JobError>;
}

/// Where a checkpoint stands: `epoch` epochs done and `step` steps of the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    pub epoch: usize,
    pub step: usize,
}

/// Everything one training run takes, bundled so the trait method stays readable.
pub struct TrainJob<'a, F: Family> {
    pub net: &'a F::Net,
    pub examples: Arc<Vec<Example>>,
    pub params: &'a JobParams,
    pub settings: &'a Settings,
    pub device: Device,
    pub seed: u64,
    pub resume: Option<F::Resume>,
    pub control: &'a Control,
    /// Validation crops: with `params.keep_best`, scored during training to keep the best epoch.
    pub validation: Arc<Vec<Example>>,
    /// Seconds one scoring of `validation` took (the base model's), for the automatic interval.
    pub score_seconds: Option<f64>,
}

/// How training went, and which epoch's weights the network holds at the end.
pub struct TrainResult {
    pub outcome: TrainOutcome,
    /// The epoch whose weights were kept (best validation AP@0.5; `None`: the last epoch's, as
    /// trained, because nothing was scored).
    pub kept_epoch: Option<usize>,
    /// AP@0.5 of every epoch scored during training.
    pub scored: Vec<ScoredEpoch>,
}

/// What the training thread reports to the job, whatever the family: epochs (progress, metrics)
/// and checkpoints (already encoded by the family).
pub struct Reporter {
    pub events: Events,
    pub checkpoint_every: usize,
}

impl Reporter {
    /// An epoch ended: progress with loss and ETA.
    pub fn epoch(&self, e: &EpochInfo) {
        let test = e.test_loss.map(|t| format!(", test loss {t:.4}")).unwrap_or_default();
        self.events.progress(
            super::stages::training_fraction(e.epoch + 1, e.n_epochs),
            super::stages::Step::Training.title(),
            format!(
                "Epoch {}/{}: loss {:.4}{test}, ETA {}",
                e.epoch + 1,
                e.n_epochs,
                e.train_loss,
                super::events::fmt_duration(e.eta_s)
            ),
        );
        self.events.send(JobEvent::Epoch(e.clone()));
    }

    /// Whether a periodic checkpoint is due after `epochs_done` of `n_epochs` (none after the
    /// last: the model itself is uploaded then).
    pub fn checkpoint_due(&self, epochs_done: usize, n_epochs: usize) -> bool {
        epochs_done < n_epochs && epochs_done.is_multiple_of(self.checkpoint_every.max(1))
    }

    /// After epoch `e`: the checkpoint of `state` (the state after it) when one is due;
    /// `encode` runs only then.
    pub fn checkpoint_after(
        &self,
        e: &EpochInfo,
        state: &TrainState,
        encode: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) {
        if self.checkpoint_due(e.epoch + 1, e.n_epochs) {
            // state.epoch == e.epoch + 1: epochs completed (see JobEvent::Checkpoint)
            self.checkpoint(state.epoch, state.step, encode());
        }
    }

    /// A checkpoint after `epoch` epochs and `step` steps of the next (see [`JobEvent::Checkpoint`]).
    pub fn checkpoint(&self, epoch: usize, step: usize, bytes: std::io::Result<Vec<u8>>) {
        match bytes {
            Ok(bytes) => self.events.send(JobEvent::Checkpoint { epoch, step, bytes }),
            // a failed checkpoint is logged, not fatal: the job goes on without it
            Err(err) => tracing::warn!(error = %err, epoch, step, "could not encode a checkpoint"),
        }
    }
}
