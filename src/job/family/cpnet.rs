//! The classic CPnet family (cellpose 3.1.1.2), as NimbusImage's "Cellpose retrain" tool trains
//! it: two channels (Primary, optional Secondary), SGD as the reference worker does, models in
//! `Private/.cellpose/models`.

use bytes::Bytes;
use tch::Device;

use super::{Family, Reporter, ResumePoint, TrainJob};
use crate::config::Settings;
use crate::evaluate::{self, ApSummary};
use crate::job::error::JobError;
use crate::job::params::{fields_with_limits, Field, BASE_MODELS};
use crate::job::validate::JobParams;
use crate::model::{registry, torch_file, Model, ModelError, ModelFamily};
use crate::train::{
    self, checkpoint, EpochInfo, Example, OptimizerKind, PrepareOptions, RawExample, Resume, TrainConfig,
    TrainOutcome, TrainState,
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
        train::prepare(raw, &opts)
            .map(|p| p.examples)
            .map_err(|e| JobError::Dataset { dataset: what.into(), detail: e.to_string() })
    }

    fn resume(&self, bytes: &[u8], net: &Model) -> Result<(Resume, ResumePoint), JobError> {
        let r = Resume::load(bytes, "checkpoint", net)?;
        let at = ResumePoint { epoch: r.state.epoch, step: r.state.step };
        Ok((r, at))
    }

    fn train(&self, job: TrainJob<'_, Self>, reporter: &mut Reporter) -> Result<TrainOutcome, JobError> {
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
        let mut hooks = Hooks { reporter };
        Ok(train::train_seg(job.net, job.examples, None, &cfg, &mut hooks, job.control, job.resume)?)
    }

    fn score(&self, net: &Model, examples: &[Example], device: Device) -> Result<ApSummary, JobError> {
        evaluate::score_examples(net, net.net.diam_mean(), examples, device)
            .map_err(|e| JobError::Scoring(e.to_string()))
    }

    fn to_file(&self, net: &Model) -> Result<Bytes, JobError> {
        Ok(Bytes::from(torch_file::state_dict_to_bytes(&net.state_dict())?))
    }
}

/// The trainer's hooks for a job: progress and checkpoints through the [`Reporter`].
struct Hooks<'a> {
    reporter: &'a mut Reporter,
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
        if self.reporter.checkpoint_due(e.epoch + 1, e.n_epochs) {
            // state.epoch == e.epoch + 1: epochs completed (see JobEvent::Checkpoint)
            self.reporter.checkpoint(state.epoch, state.step, checkpoint::encode(model, optim, state));
        }
        Ok(())
    }

    fn on_interrupt(&mut self, model: &Model, optim: &train::Optimizer, state: &TrainState) {
        self.reporter.checkpoint(state.epoch, state.step, checkpoint::encode(model, optim, state));
    }
}
