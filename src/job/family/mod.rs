//! The seam between the job's stages and a model family. [`Facts`] is what a tool is without its
//! network (its fields, built-ins, Girder folder, validation): the interface and the intake read
//! it through [`facts`]. [`Family`] adds what a stage needs to know about the network it trains
//! (how to load a base, prepare examples, train, score, and write the file Python loads); the
//! stages are generic over it. CPnet (cellpose 3) implements both in [`cpnet`], Cellpose-SAM
//! (cellpose 4) in [`cpsam`].

pub mod cpnet;
pub mod cpsam;
mod hooks;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tch::Device;

use super::error::JobError;
use super::events::{Events, JobEvent};
use super::params::{shared_fields, Field, SharedRanges};
use super::params::{EPOCHS, KEEP_BEST, LEARNING_RATE, WEIGHT_DECAY};
use super::validate::{
    flag, json_type, number_field, tag_fields, ChannelChoice, JobParams, ParamError, ParamErrors,
};
use crate::config::Settings;
use crate::control::Control;
use crate::evaluate::ApSummary;
use crate::model::ModelFamily;
use crate::report::{ScoredEpoch, Snapshot};
use crate::tool::Tool;
use crate::train::{
    EpochInfo, Example, Optimizer, RawExample, TrainError, TrainHooks, TrainOutcome, TrainState,
};

pub use cpnet::Cpnet;
pub use cpsam::Cpsam;
pub use hooks::train;

/// A tool's plain facts, one constant per family.
#[derive(Debug)]
pub struct About {
    pub tool: Tool,
    /// How messages name the tool's models ("Cellpose", "Cellpose-SAM").
    pub label: &'static str,
    /// The folder under the user's `Private` that holds the family's models and reports
    /// (`.cellpose` for CPnet: what NimbusImage's segmentation worker lists).
    pub root_folder: &'static str,
    /// The Base Model when the field is left out.
    pub default_base_model: &'static str,
}

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

/// What a tool is, without its network: the one source of its interface, its built-ins, its
/// folder and its validation. Object-safe, so the edge can serve a [`Tool`] without knowing its
/// network type ([`facts`]).
pub trait Facts: Send + Sync {
    /// The tool's plain facts.
    fn about(&self) -> &'static About;
    fn tool(&self) -> Tool {
        self.about().tool
    }
    fn kind(&self) -> ModelFamily {
        self.tool().family()
    }
    fn label(&self) -> &'static str {
        self.about().label
    }
    fn root_folder(&self) -> &'static str {
        self.about().root_folder
    }
    fn default_base_model(&self) -> &'static str {
        self.about().default_base_model
    }
    /// The tool's own fields (notes, base model, output name, channels), before the shared ones.
    fn own_fields(&self) -> Vec<Field>;
    /// The ranges, defaults and tooltips of the number fields both tools share, with the
    /// deployment's epoch limits.
    fn ranges(&self, settings: &Settings) -> SharedRanges;
    /// The tool's interface fields: its own, then the shared ones with its ranges.
    fn fields(&self, settings: &Settings) -> Vec<Field> {
        let mut fields = self.own_fields();
        fields.extend(shared_fields(&self.ranges(settings)));
        fields
    }
    /// The tool's channel fields -> the crop channels; problems go to `err`, notes to `warnings`.
    fn read_channels(
        &self,
        values: &Value,
        err: &mut dyn FnMut(&str, String),
        warnings: &mut Vec<String>,
    ) -> ChannelChoice;
    /// The Output Model Name as the tool's reference worker reads it.
    fn output_name(&self, raw: &str) -> String {
        raw.to_string()
    }
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
    /// The interface values -> checked parameters and warnings ([`validate`]); `known_model`
    /// says whether a Base Model exists.
    fn validate(
        &self,
        values: &Value,
        settings: &Settings,
        known_model: &dyn Fn(&str) -> bool,
    ) -> Result<(JobParams, Vec<String>), ParamErrors> {
        validate(values, self, settings, known_model)
    }
}

/// Checks an Output Model Name of `tool`: the shared name rule ([`crate::model::name`]), and no
/// built-in name of the tool, so the user's model never shadows a built-in one in the Base Model
/// list (and a Cellpose-SAM label, which always means its built-in, stays reachable).
pub(crate) fn check_output_name<T: Facts + ?Sized>(tool: &T, name: &str) -> Result<(), String> {
    crate::model::name::check_model_name(name)?;
    if tool.is_builtin(name) {
        return Err(format!(
            "`{name}` is reserved for a built-in {} model; choose another name so the built-in model is not shadowed",
            tool.label()
        ));
    }
    Ok(())
}

/// Validates `values` (the `workerInterface` object) against `tool`'s fields (with the
/// deployment's epoch range from `settings`). `known_model` says whether a Base Model exists
/// (built-in or in the user's Girder models). Returns the parameters and warnings to show the
/// user.
pub fn validate<T: Facts + ?Sized>(
    values: &Value,
    tool: &T,
    settings: &Settings,
    known_model: &dyn Fn(&str) -> bool,
) -> Result<(JobParams, Vec<String>), ParamErrors> {
    if !values.is_object() {
        return Err(ParamErrors(vec![ParamError {
            field: "workerInterface".into(),
            message: format!("must be an object of the tool's fields, not {}", json_type(values)),
        }]));
    }
    let fields = tool.fields(settings);
    let mut errs: Vec<ParamError> = Vec::new();
    let mut warnings = Vec::new();
    let mut err = |field: &str, message: String| errs.push(ParamError { field: field.into(), message });
    let learning_rate = number_field(values, &fields, LEARNING_RATE, &mut err);
    let epochs = number_field(values, &fields, EPOCHS, &mut err) as usize;
    let weight_decay = number_field(values, &fields, WEIGHT_DECAY, &mut err);

    let base_model = match values.get("Base Model") {
        None | Some(Value::Null) => tool.default_base_model().to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            err("Base Model", format!("expected a model name (got {v})"));
            String::new()
        }
    };
    if !base_model.is_empty() && !known_model(&base_model) {
        err(
            "Base Model",
            format!(
                "unknown model `{base_model}`: not a built-in model and not in your {}/models folder",
                tool.root_folder()
            ),
        );
    }
    let keep_best = flag(values, KEEP_BEST, true, &mut err);
    let output_name = match values.get("Output Model Name") {
        Some(Value::String(s)) => tool.output_name(s),
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    };
    if let Err(m) = check_output_name(tool, &output_name) {
        err("Output Model Name", m);
    }
    let channels = tool.read_channels(values, &mut err, &mut warnings);
    let (training_tags, region_tags, validation_tags) = tag_fields(values, &mut errs);
    if !errs.is_empty() {
        return Err(ParamErrors(errs));
    }
    let params = JobParams {
        base_model,
        nuclear: channels.nuclear,
        output_name,
        primary_channel: channels.primary_channel,
        secondary_channel: channels.secondary_channel,
        slots: channels.slots,
        training_tags,
        region_tags,
        validation_tags,
        learning_rate,
        epochs,
        weight_decay,
        keep_best,
    };
    Ok((params, warnings))
}

/// The facts of `tool`'s family.
pub(crate) fn facts(tool: Tool) -> &'static dyn Facts {
    match tool {
        Tool::Cellpose => &Cpnet,
        Tool::CellposeSam => &Cpsam,
    }
}

/// The tool whose fields `values` are (a `compute` request says its tool only so): the
/// Cellpose-SAM tool's slot fields, else the Cellpose tool's.
pub(crate) fn tool_of_values(values: &Value) -> Tool {
    if cpsam::is_cpsam_values(values) {
        Tool::CellposeSam
    } else {
        Tool::Cellpose
    }
}

/// A model family as the job's stages see it: its [`Facts`] and its network.
pub trait Family: Facts + Clone + 'static {
    /// The loaded network (moved to the training thread and back; its best epoch's weights
    /// kept by "Keep best model").
    type Net: Snapshot + Send + 'static;
    /// A resume point decoded from a checkpoint, applied by [`Family::train`].
    type Resume: Send + 'static;

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

    /// Trains `job.net` in place (blocking; runs on the blocking pool) with this family's
    /// `train_seg` semantics and the job's parameters, calling `hooks` and stopping as
    /// `job.control` says. [`train`] is what the job calls: it adds the hooks every family shares.
    fn train_seg(
        &self,
        job: TrainJob<'_, Self>,
        hooks: &mut dyn TrainHooks<Self::Net>,
    ) -> Result<TrainOutcome, TrainError>
    where
        Self: Sized;

    /// A resumable checkpoint of `net` and `optim` at `state` (see [`crate::train::checkpoint`]).
    fn checkpoint(&self, net: &Self::Net, optim: &Optimizer, state: &TrainState) -> std::io::Result<Vec<u8>>;

    /// AP of `net` on the validation examples (blocking), with the predicted masks of the first
    /// `keep` of them (the report's overlay picture).
    fn score_keeping(
        &self,
        net: &Self::Net,
        examples: &[Example],
        device: Device,
        keep: usize,
    ) -> Result<(ApSummary, Vec<ndarray::Array2<u32>>), JobError>;

    /// AP of `net` on the validation examples (blocking).
    fn score(&self, net: &Self::Net, examples: &[Example], device: Device) -> Result<ApSummary, JobError> {
        self.score_keeping(net, examples, device, 0).map(|(ap, _)| ap)
    }

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
    /// Epoch progress lines at most this often (`[training] progress_interval_s`).
    pub progress_interval: std::time::Duration,
    /// When the last epoch progress line went out.
    last_line: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Reporter {
    pub fn new(events: Events, checkpoint_every: usize, progress_interval: std::time::Duration) -> Self {
        Reporter { events, checkpoint_every, progress_interval, last_line: Default::default() }
    }

    /// An epoch ended: progress with loss and ETA, unless a line went out less than
    /// `progress_interval` ago (the first and the last epoch are always reported); the epoch's
    /// metrics are sent either way.
    pub fn epoch(&self, e: &EpochInfo) {
        if self.line_due(e) {
            self.epoch_line(e);
        }
        self.events.send(JobEvent::Epoch(e.clone()));
    }

    fn line_due(&self, e: &EpochInfo) -> bool {
        let now = std::time::Instant::now();
        let Ok(mut last) = self.last_line.lock() else { return true };
        let due = e.epoch + 1 >= e.n_epochs
            || last.is_none_or(|at| now.duration_since(at) >= self.progress_interval);
        if due {
            *last = Some(now);
        }
        due
    }

    fn epoch_line(&self, e: &EpochInfo) {
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
    }

    /// Whether a periodic checkpoint is due after `epochs_done` of `n_epochs` (none after the
    /// last: the model itself is uploaded then).
    pub(crate) fn checkpoint_due(&self, epochs_done: usize, n_epochs: usize) -> bool {
        epochs_done < n_epochs && epochs_done.is_multiple_of(self.checkpoint_every.max(1))
    }

    /// After epoch `e`: the checkpoint of `state` (the state after it) when one is due;
    /// `encode` runs only then.
    pub(crate) fn checkpoint_after(
        &self,
        e: &EpochInfo,
        state: &TrainState,
        encode: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) {
        if self.checkpoint_due(e.epoch + 1, e.n_epochs) {
            // state.epoch == e.epoch + 1: epochs completed (see events::Checkpoint)
            self.events.checkpoint(state.epoch, state.step, encode);
        }
    }

    /// The checkpoint of `state` on the way out of a shutdown, before the step it names.
    pub(crate) fn checkpoint_at(
        &self,
        state: &TrainState,
        encode: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) {
        self.events.checkpoint(state.epoch, state.step, encode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn epoch(epoch: usize, n_epochs: usize) -> EpochInfo {
        EpochInfo {
            epoch,
            n_epochs,
            train_loss: 0.5,
            test_loss: None,
            lr: 0.1,
            elapsed_s: 0.0,
            eta_s: 0.0,
            seconds_per_step: 0.0,
            seconds: 0.0,
            precision: "fp32",
        }
    }

    /// The "Epoch N/M" infos and the number of epoch (metrics) events `reporter` sent for 5 epochs.
    fn five_epochs(interval: Duration) -> (Vec<String>, usize) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reporter = Reporter::new(Events::new(tx), 10, interval);
        for e in 0..5 {
            reporter.epoch(&epoch(e, 5));
        }
        let (mut lines, mut metrics) = (Vec::new(), 0);
        while let Ok(e) = rx.try_recv() {
            match e {
                JobEvent::Progress { info, .. } => lines.push(info.split(':').next().unwrap().to_string()),
                JobEvent::Epoch(_) => metrics += 1,
                JobEvent::Warning { .. } => {}
            }
        }
        (lines, metrics)
    }

    #[test]
    fn fast_epochs_report_the_first_and_the_last_line_and_every_epochs_metrics() {
        let (lines, metrics) = five_epochs(Duration::from_secs(3600));
        assert_eq!(lines, ["Epoch 1/5", "Epoch 5/5"]);
        assert_eq!(metrics, 5);
    }

    #[test]
    fn a_zero_interval_reports_every_epoch() {
        let (lines, metrics) = five_epochs(Duration::ZERO);
        assert_eq!(lines, ["Epoch 1/5", "Epoch 2/5", "Epoch 3/5", "Epoch 4/5", "Epoch 5/5"]);
        assert_eq!(metrics, 5);
    }
}
