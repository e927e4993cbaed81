//! The job from start to end: intake -> fetch and rasterize -> train -> upload. One function that
//! the one-shot container mode, the queue worker and the demo all call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;
use tch::Device;

use super::dataset;
use super::error::JobError;
use super::events::{checkpoint_label, fmt_duration, Events, JobEvent};
use super::params::{fields_with_limits, BASE_MODELS};
use super::store;
use super::validate::{validate, JobParams};
use crate::config::Settings;
use crate::evaluate::{self, ApSummary};
use crate::girder::{GirderClient, Item};
use crate::model::{registry, torch_file, Model};
use crate::train::{
    self, checkpoint, CancelToken, EpochInfo, OptimizerKind, PrepareOptions, TrainConfig, TrainState,
};
use crate::transforms::{Channels, Normalize};

/// Everything a job needs to run.
pub struct JobContext {
    /// Acts as the user who submitted the job (their token).
    pub client: GirderClient,
    pub dataset_id: String,
    /// `params.workerInterface` as NimbusImage sends it.
    pub values: Value,
    pub settings: Settings,
    pub device: Device,
    /// Unique per job (the Girder job id): temporary upload names, checkpoint folder.
    pub job_tag: String,
    /// A checkpoint to continue from (a job taken over from a dead worker).
    pub resume: Option<Vec<u8>>,
    pub seed: u64,
}

/// How the caller steers a running job.
#[derive(Clone, Default)]
pub struct Controls {
    /// Abort: nothing is uploaded.
    pub cancel: CancelToken,
    /// Stop at the next step after saving a checkpoint (worker shutdown): the job can be resumed.
    pub stop: Arc<AtomicBool>,
}

/// What a finished job produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobOutcome {
    pub model_name: String,
    pub model_item_id: String,
    pub report_item_id: Option<String>,
    pub n_train: usize,
    pub n_validation: usize,
    pub ap_before: Option<ApSummary>,
    pub ap_after: Option<ApSummary>,
    pub train_losses: Vec<f64>,
    pub resumed_from_epoch: Option<usize>,
    pub seconds: f64,
}

/// The base model, resolved and loaded before any heavy work.
struct Base {
    model: Model,
    /// cellpose's diam_mean for this model (built-ins: 30, nuclei 17).
    diam_mean: f64,
}

async fn load_base(ctx: &JobContext, params: &JobParams, user_models: &[Item]) -> Result<Base, JobError> {
    let name = &params.base_model;
    if let Some(item) = user_models.iter().find(|i| &i.name == name) {
        let bytes = store::download_model(&ctx.client, item).await?;
        let sd = torch_file::read_state_dict_bytes(&bytes, &format!("your model `{name}`"))
            .map_err(crate::model::ModelError::from)?;
        let model = Model::from_state_dict(&sd, ctx.device, &format!("your model `{name}`"))?;
        let diam_mean = model.net.diam_mean();
        return Ok(Base { model, diam_mean });
    }
    let dir = registry::models_dir(ctx.settings.paths.models_dir.as_deref());
    let loaded = crate::model::open_model(name, &dir, ctx.device)?;
    let diam_mean = loaded.diam_mean();
    loaded.model.net.set_diam_mean(diam_mean);
    Ok(Base { model: loaded.model, diam_mean })
}

/// Progress when training starts and when the model is being saved: training fills the range
/// between them.
const TRAIN_START: f64 = 0.4;
const SAVING: f64 = 0.95;

/// Progress after `done` of `n` epochs: never past [`SAVING`] (0.4 + 0.55 * n / n is
/// 0.9500000000000001 in floating point, above the "Saving model" step that follows).
fn training_fraction(done: usize, n: usize) -> f64 {
    (TRAIN_START + (SAVING - TRAIN_START) * done as f64 / n.max(1) as f64).min(SAVING)
}

/// Hooks on the training thread: progress, metrics, checkpoints, stop requests.
struct JobHooks {
    events: Events,
    stop: Arc<AtomicBool>,
    checkpoint_every: usize,
}

impl train::TrainHooks for JobHooks {
    fn on_epoch(
        &mut self,
        e: &EpochInfo,
        model: &Model,
        optim: &train::Optimizer,
        state: &TrainState,
    ) -> Result<(), train::TrainError> {
        let test = e.test_loss.map(|t| format!(", test loss {t:.4}")).unwrap_or_default();
        self.events.progress(
            training_fraction(e.epoch + 1, e.n_epochs),
            "Training model",
            format!(
                "Epoch {}/{}: loss {:.4}{test}, ETA {}",
                e.epoch + 1,
                e.n_epochs,
                e.train_loss,
                fmt_duration(e.eta_s)
            ),
        );
        self.events.send(JobEvent::Epoch(e.clone()));
        let last = e.epoch + 1 == e.n_epochs;
        if !last && (e.epoch + 1).is_multiple_of(self.checkpoint_every) {
            match checkpoint::encode(model, optim, state) {
                // state.epoch == e.epoch + 1: epochs completed (see JobEvent::Checkpoint)
                Ok(bytes) => {
                    self.events.send(JobEvent::Checkpoint { epoch: state.epoch, step: state.step, bytes })
                }
                // a failed periodic checkpoint is logged, not fatal
                Err(err) => tracing::warn!(error = %err, "could not encode a checkpoint"),
            }
        }
        Ok(())
    }
    fn stop_requested(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    fn on_interrupt(&mut self, model: &Model, optim: &train::Optimizer, state: &TrainState) {
        match checkpoint::encode(model, optim, state) {
            Ok(bytes) => {
                self.events.send(JobEvent::Checkpoint { epoch: state.epoch, step: state.step, bytes })
            }
            Err(err) => tracing::warn!(error = %err, "could not encode the shutdown checkpoint"),
        }
    }
}

/// Runs the training job.
#[tracing::instrument(skip_all, fields(dataset = %ctx.dataset_id, job = %ctx.job_tag))]
pub async fn run_job(ctx: &JobContext, events: &Events, controls: &Controls) -> Result<JobOutcome, JobError> {
    let t0 = Instant::now();
    let client = &ctx.client;
    let tr = &ctx.settings.training;

    // intake: everything a user could get wrong is checked before any heavy work
    let me = client.users().me().await?;
    let user_models = store::list_user_models(client, &me.id).await?;
    let fields = fields_with_limits(tr.min_epochs, tr.max_epochs);
    let known = |m: &str| {
        BASE_MODELS.contains(&m) || registry::is_builtin(m) || user_models.iter().any(|i| i.name == m)
    };
    let (params, warnings) = validate(&ctx.values, &fields, &known)?;
    for w in warnings {
        events.warning(w, "");
    }
    let image = dataset::open_dataset(client, &ctx.dataset_id).await?;
    dataset::check_channels(&image, &params)?;
    let base = load_base(ctx, &params, &user_models).await?;
    base.model.check_io(2, 3, &params.base_model)?;

    events.progress(0.1, "Loading annotations", "Retrieving annotations from server");
    let tags: Vec<String> = [&params.training_tags, &params.region_tags, &params.validation_tags]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let (annotations, total, seen) = dataset::load_annotations(client, &ctx.dataset_id, &tags).await?;
    tracing::info!(trainable = annotations.len(), total, "annotations loaded");
    if crate::annotations::with_any_tag(&annotations, &params.training_tags).is_empty() {
        // counted over every polygon and rectangle of the dataset, not only the tagged ones
        return Err(JobError::NoTrainingAnnotations { tags: params.training_tags.clone(), total, seen });
    }
    events.progress(0.2, "Processing annotations", "Grouping annotations by location");
    if controls.cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    events.progress(0.3, "Loading training data", "Loading training images");
    let samples =
        dataset::collect_samples(client, &image, &params, &annotations, tr.max_region_pixels, events).await?;
    let (chan, chan2) = params.channels();
    let prep = PrepareOptions {
        channels: Channels::Pair { chan, chan2 },
        normalize: Normalize::default(),
        min_train_masks: 1,
    };
    let (train_set, validation) = {
        let prep = prep.clone();
        let samples = samples;
        tokio::task::spawn_blocking(move || -> Result<_, crate::train::data::DataError> {
            let t = train::prepare(samples.train, &prep)?.examples;
            let v =
                train::prepare(samples.validation, &PrepareOptions { min_train_masks: 0, ..prep })?.examples;
            Ok((t, v))
        })
        .await
        .map_err(|e| JobError::Io(std::io::Error::other(e.to_string())))?
        .map_err(|e| JobError::Dataset { dataset: ctx.dataset_id.clone(), detail: e.to_string() })?
    };
    let (n_train, n_validation) = (train_set.len(), validation.len());
    let validation = Arc::new(validation);

    // resume from a checkpoint (a job taken over from another worker)
    let model = base.model;
    let diam_mean = base.diam_mean;
    let mut resume = None;
    let mut resumed_from_epoch = None;
    if let Some(bytes) = &ctx.resume {
        let ck = checkpoint::decode(bytes, "checkpoint")
            .map_err(|e| JobError::Dataset { dataset: ctx.job_tag.clone(), detail: e.to_string() })?;
        model.copy_from(&ck.model, "checkpoint")?;
        resumed_from_epoch = Some(ck.state.epoch);
        events.warning(
            format!(
                "Resuming from the checkpoint after {}.",
                checkpoint_label(ck.state.epoch, ck.state.step)
            ),
            "A previous worker stopped while training this job.",
        );
        resume = Some(train::Resume { state: ck.state, optimizer_state: ck.optimizer });
    }

    let ap_before = if !validation.is_empty() && resume.is_none() {
        Some(score(&model, diam_mean, &validation, ctx.device)?)
    } else {
        None
    };

    events.progress(TRAIN_START, "Training model", format!("Training with {n_train} images, be patient..."));
    let cfg = TrainConfig {
        learning_rate: params.learning_rate,
        weight_decay: params.weight_decay,
        optimizer: OptimizerKind::Sgd, // NimbusImage's worker trains with SGD=True
        n_epochs: params.epochs,
        batch_size: tr.batch_size,
        bsize: tr.bsize,
        seed: ctx.seed,
        device: ctx.device,
        mixed_precision: auto(&tr.mixed_precision, ctx.device),
        // faster on CUDA and on CPU (oneDNN NHWC kernels); values and saved files are unchanged
        channels_last: true,
        cuda_graphs: ctx.device.is_cuda(),
        ..Default::default()
    };
    let mut hooks = JobHooks {
        events: events.clone(),
        stop: controls.stop.clone(),
        checkpoint_every: tr.checkpoint_every,
    };
    let cancel = controls.cancel.clone();
    let train_arc = Arc::new(train_set);
    let (model, outcome) = tokio::task::spawn_blocking(move || {
        let out = train::train_seg(&model, train_arc, None, &cfg, &mut hooks, &cancel, resume);
        (model, out)
    })
    .await
    .map_err(|e| JobError::Io(std::io::Error::other(e.to_string())))?;
    let outcome = match outcome {
        Ok(o) => o,
        Err(train::TrainError::Interrupted { epoch, .. }) => return Err(JobError::Interrupted { epoch }),
        Err(e) => return Err(e.into()),
    };
    if controls.cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    let ap_after = if !validation.is_empty() {
        Some(score(&model, model.net.diam_mean(), &validation, ctx.device)?)
    } else {
        None
    };

    events.progress(SAVING, "Saving model", format!("Uploading model {}", params.output_name));
    let bytes = Bytes::from(torch_file::state_dict_to_bytes(&model.state_dict())?);
    let kept = keep_locally(&ctx.settings, &ctx.job_tag, &params.output_name, &bytes);
    let item = match store::upload_model(client, &me.id, &params.output_name, bytes, &ctx.job_tag).await {
        Ok(item) => {
            if let Some(path) = &kept {
                let _ = std::fs::remove_file(path);
                let _ = path.parent().map(std::fs::remove_dir);
            }
            item
        }
        Err(e) => {
            return Err(match kept {
                Some(kept) => JobError::ModelKept { source: Box::new(e), kept },
                None => e,
            })
        }
    };
    let report = crate::report::JobReport {
        model_name: params.output_name.clone(),
        base_model: params.base_model.clone(),
        epochs: params.epochs,
        learning_rate: params.learning_rate,
        weight_decay: params.weight_decay,
        n_train,
        n_validation,
        train_losses: outcome.train_losses.clone(),
        epoch_seconds: outcome.epoch_seconds.clone(),
        ap_before: ap_before.clone(),
        ap_after: ap_after.clone(),
        seconds: t0.elapsed().as_secs_f64(),
        device: crate::device::describe(ctx.device),
    };
    let report_item = match report.files() {
        Ok(files) => match store::upload_report(client, &me.id, &params.output_name, files).await {
            Ok(i) => Some(i.id),
            Err(e) => {
                events.warning("The training report could not be uploaded.", e.to_string());
                None
            }
        },
        Err(e) => {
            events.warning("The training report could not be drawn.", e.to_string());
            None
        }
    };
    let summary = match (&ap_before, &ap_after) {
        (Some(b), Some(a)) => format!(" Validation AP@0.5: {:.3} before, {:.3} after.", b.ap50(), a.ap50()),
        _ => String::new(),
    };
    events.progress(
        1.0,
        "Done",
        format!("Model {} saved to your .cellpose/models folder.{summary}", params.output_name),
    );
    Ok(JobOutcome {
        model_name: params.output_name,
        model_item_id: item.id,
        report_item_id: report_item,
        n_train,
        n_validation,
        ap_before,
        ap_after,
        train_losses: outcome.train_losses,
        resumed_from_epoch,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Writes the trained model to `<work_dir>/<job>/<name>` before it is uploaded, so that a failed
/// upload does not lose the training. Best effort: a worker that cannot write locally still uploads.
fn keep_locally(settings: &Settings, job_tag: &str, name: &str, bytes: &[u8]) -> Option<std::path::PathBuf> {
    let root =
        settings.paths.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("cellpose-train-worker"));
    let dir = root.join(job_tag);
    let path = dir.join(name);
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, bytes)) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not keep a local copy of the model before uploading");
            None
        }
    }
}

fn auto(flag: &str, device: Device) -> bool {
    match flag {
        "on" => true,
        "off" => false,
        _ => device.is_cuda(),
    }
}

/// Scores `model` on the validation examples; CPU/GPU-heavy, so the async runtime is told to
/// move other tasks off this thread while it runs.
fn score(
    model: &Model,
    diam_mean: f64,
    validation: &[train::Example],
    device: Device,
) -> Result<ApSummary, JobError> {
    tokio::task::block_in_place(|| evaluate::score_examples(model, diam_mean, validation, device))
        .map_err(|e| JobError::Dataset { dataset: "validation regions".into(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_progress_rises_to_the_saving_step_and_never_past_it() {
        for n in [1, 3, 7, 10, 60, 100, 2000] {
            let f: Vec<f64> = (0..=n).map(|done| training_fraction(done, n)).collect();
            assert!(f.windows(2).all(|w| w[0] <= w[1]), "n={n}");
            assert_eq!((f[0], f[n]), (TRAIN_START, SAVING), "n={n}");
        }
    }
}
