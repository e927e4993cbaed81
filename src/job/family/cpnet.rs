//! The classic CPnet family (cellpose 3.1.1.2), as NimbusImage's "Cellpose retrain" tool trains
//! it: two channels (Primary, optional Secondary), SGD as the reference worker does, models in
//! `Private/.cellpose/models`.

use std::sync::Arc;

use bytes::Bytes;
use tch::Device;

use super::{Family, Reporter, ResumePoint, TrainJob, TrainResult};
use crate::config::Settings;
use crate::evaluate::{self, ApSummary};
use crate::job::error::JobError;
use crate::job::params::{fields_with_limits, Field, BASE_MODELS};
use crate::job::validate::JobParams;
use crate::model::{registry, torch_file, Model, ModelError, ModelFamily};
use crate::report::{auto_eval_every, BestModel};
use crate::train::{
    self, checkpoint, EpochInfo, Example, OptimizerKind, PrepareOptions, RawExample, Resume, TrainConfig,
    TrainState,
};
use crate::transforms::{Channels, Normalize};

/// The CPnet family.
#[derive(Debug, Clone, Copy)]
pub struct Cpnet;

/// Input and output channels of every model this tool trains: two image channels in; dY, dX
/// and cell probability out.
const CHANNELS_IN: i64 = 2;
const CHANNELS_OUT: i64 = 3;

impl Family for Cpnet {
    type Net = Model;
    type Resume = Resume;

    fn kind(&self) -> ModelFamily {
        ModelFamily::Cpnet
    }

    fn root_folder(&self) -> &'static str {
        ".cellpose"
    }

    fn fields(&self, settings: &Settings) -> Vec<Field> {
        fields_with_limits(settings.training.min_epochs, settings.training.max_epochs)
    }

    fn is_builtin(&self, name: &str) -> bool {
        BASE_MODELS.contains(&name) || registry::is_builtin(name)
    }

    fn offered_builtins(&self, settings: &Settings) -> Vec<String> {
        // a built-in is offered only when its weights are installed: a job on a missing one fails
        let dir = registry::models_dir(settings.paths.models_dir.as_deref());
        let models: Vec<String> = BASE_MODELS
            .iter()
            .filter(|m| registry::resolve(m, &dir).is_ok())
            .map(|s| s.to_string())
            .collect();
        if models.is_empty() {
            tracing::warn!(models_dir = %dir.display(), "no built-in model weights installed; offering only the user's models");
        }
        models
    }

    fn load_file(&self, bytes: &[u8], origin: &str, device: Device) -> Result<Model, JobError> {
        let sd = torch_file::read_state_dict_bytes(bytes, origin).map_err(ModelError::from)?;
        Ok(Model::from_state_dict(&sd, device, origin)?)
    }

    fn load_builtin(&self, name: &str, settings: &Settings, device: Device) -> Result<Model, JobError> {
        let dir = registry::models_dir(settings.paths.models_dir.as_deref());
        let loaded = crate::model::open_model(name, &dir, device)?;
        // built-ins train and score at cellpose's fixed diam_mean (30; nuclei 17)
        let diam_mean = loaded.diam_mean();
        loaded.model.net.set_diam_mean(diam_mean);
        Ok(loaded.model)
    }

    fn check_base(&self, net: &Model, params: &JobParams) -> Result<(), JobError> {
        Ok(net.check_io(CHANNELS_IN, CHANNELS_OUT, &params.base_model)?)
    }

    fn prepare(
        &self,
        raw: Vec<RawExample>,
        params: &JobParams,
        validation: bool,
    ) -> Result<Vec<Example>, JobError> {
        let (chan, chan2) = params.channels();
        let opts = PrepareOptions {
            channels: Channels::Pair { chan, chan2 },
            normalize: Normalize::default(),
            // as the reference worker: an image with one mask trains; validation keeps them all
            min_train_masks: if validation { 0 } else { 1 },
        };
        let what = if validation { "validation regions" } else { "training samples" };
        train::prepare(raw, &opts).map(|p| p.examples).map_err(|e| super::preparing_failed(what, e))
    }

    fn resume(&self, bytes: &[u8], net: &Model) -> Result<(Resume, ResumePoint), JobError> {
        let r = Resume::load(bytes, "checkpoint", net)?;
        let at = ResumePoint { epoch: r.state.epoch, step: r.state.step };
        Ok((r, at))
    }

    fn train(&self, job: TrainJob<'_, Self>, reporter: &mut Reporter) -> Result<TrainResult, JobError> {
        let tr = &job.settings.training;
        let cfg = TrainConfig {
            learning_rate: job.params.learning_rate,
            weight_decay: job.params.weight_decay,
            optimizer: OptimizerKind::Sgd, // NimbusImage's worker trains with SGD=True
            n_epochs: job.params.epochs,
            batch_size: tr.batch_size,
            bsize: tr.bsize,
            seed: job.seed,
            device: job.device,
            mixed_precision: tr.mixed_precision.resolve(job.device.is_cuda()),
            // faster on CUDA and on CPU (oneDNN NHWC kernels); values and saved files are unchanged
            channels_last: true,
            cudnn_benchmark: tr.cudnn_benchmark.resolve(true),
            cuda_graphs: job.device.is_cuda(),
            profile_steps: tr.profile_steps,
            ..Default::default()
        };
        let keep = (job.params.keep_best && !job.validation.is_empty()).then(|| KeepBest {
            validation: job.validation.clone(),
            device: job.device,
            every: (tr.eval_every > 0).then_some(tr.eval_every),
            score_seconds: job.score_seconds,
            best: BestModel::new(),
        });
        let mut hooks = Hooks { reporter, keep };
        let outcome =
            train::train_seg(job.net, job.examples, None, &cfg, &mut hooks, job.control, job.resume)?;
        let Some(keep) = hooks.keep else {
            return Ok(TrainResult { outcome, kept_epoch: None, scored: Vec::new() });
        };
        // the best epoch's weights replace the last epoch's (a no-op when the last was the best)
        let kept_epoch = keep.best.restore_into(job.net)?;
        if let Some(e) = kept_epoch {
            tracing::info!(epoch = e, ap50 = keep.best.best().map(|b| b.ap50), "kept the best-scoring epoch");
        }
        Ok(TrainResult { outcome, kept_epoch, scored: keep.best.history })
    }

    fn score(&self, net: &Model, examples: &[Example], device: Device) -> Result<ApSummary, JobError> {
        evaluate::score_examples(net, net.net.diam_mean(), examples, device)
            .map_err(|e| JobError::Scoring(e.to_string()))
    }

    fn to_file(&self, net: &Model) -> Result<Bytes, JobError> {
        Ok(Bytes::from(torch_file::state_dict_to_bytes(&net.state_dict())?))
    }
}

/// The trainer's hooks for a job: progress and checkpoints through the [`Reporter`], and with
/// a validation set the best-scoring epoch.
struct Hooks<'a> {
    reporter: &'a mut Reporter,
    keep: Option<KeepBest>,
}

/// Scores the validation crops every `every` epochs (and after the last) and keeps the best.
struct KeepBest {
    validation: Arc<Vec<Example>>,
    device: Device,
    /// `None` until chosen from the first epoch's time ([`auto_eval_every`]).
    every: Option<usize>,
    score_seconds: Option<f64>,
    best: BestModel,
}

impl KeepBest {
    fn after_epoch(&mut self, e: &EpochInfo, model: &Model) -> Result<(), train::TrainError> {
        let done = e.epoch + 1;
        let every = *self.every.get_or_insert_with(|| match self.score_seconds {
            Some(s) => auto_eval_every(s, e.seconds),
            None => 10,
        });
        if !(done.is_multiple_of(every) || done == e.n_epochs) {
            return Ok(());
        }
        // a failed scoring is not worth the training: keep the last epoch instead
        match evaluate::score_examples(model, model.net.diam_mean(), &self.validation, self.device) {
            Ok(ap) => {
                self.best.offer(done, &ap, model);
            }
            Err(err) => tracing::warn!(error = %err, epoch = done, "scoring during training failed"),
        }
        Ok(())
    }
}

impl train::TrainHooks for Hooks<'_> {
    fn on_epoch(
        &mut self,
        e: &EpochInfo,
        model: &Model,
        optim: &train::Optimizer,
        state: &TrainState,
    ) -> Result<(), train::TrainError> {
        self.reporter.epoch(e);
        if let Some(keep) = &mut self.keep {
            keep.after_epoch(e, model)?;
        }
        self.reporter.checkpoint_after(e, state, || checkpoint::encode(model, optim, state));
        Ok(())
    }

    fn on_interrupt(&mut self, model: &Model, optim: &train::Optimizer, state: &TrainState) {
        self.reporter.checkpoint(state.epoch, state.step, checkpoint::encode(model, optim, state));
    }
}
