//! The classic CPnet family (cellpose 3.1.1.2), as NimbusImage's "Cellpose retrain" tool trains
//! it, and the one source of that tool's facts: its fields (Primary, optional Secondary channel,
//! Nuclear Model?) and ranges, its built-ins, its folder (`Private/.cellpose/models`), SGD as the
//! reference worker trains, and the cellpose 3.1.1.2 schedule ([`crate::train::schedule`]).

use bytes::Bytes;
use serde_json::{json, Value};
use tch::Device;

use super::{About, Facts, Family, ResumePoint, TrainJob};
use crate::config::Settings;
use crate::evaluate::{self, ApSummary};
use crate::job::error::JobError;
use crate::job::params::{Field, FieldKind, NumberField, SharedRanges};
use crate::job::store::CELLPOSE;
use crate::job::validate::{channel, flag, ChannelChoice, ChannelSlot, JobParams};
use crate::model::{registry, torch_file, Model, ModelError, ModelFamily};
use crate::tool::Tool;
use crate::train::{
    self, checkpoint, Example, Optimizer, OptimizerKind, PrepareOptions, RawExample, Resume, TrainConfig,
    TrainError, TrainHooks, TrainOutcome, TrainState,
};
use crate::transforms::{Channels, Normalize};

/// The CPnet family.
#[derive(Debug, Clone, Copy)]
pub struct Cpnet;

/// NimbusImage's `BASE_MODELS`: the built-ins the interface offers, each only when its weight
/// file is in the models folder.
pub(crate) const BASE_MODELS: [&str; 4] = ["cyto", "cyto2", "cyto3", "nuclei"];

/// Input and output channels of every model this tool trains: two image channels in; dY, dX
/// and cell probability out.
const CHANNELS_IN: i64 = 2;
const CHANNELS_OUT: i64 = 3;

const PRIMARY: &str = "Primary Channel";
const SECONDARY: &str = "Secondary Channel";
const NUCLEAR: &str = "Nuclear Model?";

const ABOUT: About =
    About { tool: Tool::Cellpose, label: "Cellpose", root_folder: CELLPOSE, default_base_model: "cyto3" };

impl Facts for Cpnet {
    fn about(&self) -> &'static About {
        &ABOUT
    }

    fn own_fields(&self) -> Vec<Field> {
        use FieldKind::*;
        vec![
            Field {
                name: "Cellpose train",
                kind: Notes,
                default: Some(json!("This tool trains a Cellpose model using user-corrected annotations.")),
                required: false,
                tooltip: "",
                display_order: 0,
            },
            Field {
                name: "Base Model",
                kind: Select,
                default: Some(json!(self.default_base_model())),
                required: true,
                tooltip: "This model is the one used as a base for training.\ncyto3 is the most accurate for cells, whereas nuclei is best for finding nuclei.\nYour own models (in your .cellpose/models folder) are listed too.",
                display_order: 4,
            },
            Field {
                name: NUCLEAR,
                kind: Checkbox,
                default: Some(json!(false)),
                required: false,
                tooltip: "If you are training a nuclear model, check this box (only the primary channel is used).",
                display_order: 5,
            },
            Field {
                name: "Output Model Name",
                kind: Text,
                default: None,
                required: true,
                tooltip: "The name of the retrained model (saved to your .cellpose/models folder; an existing model of that name is replaced once the new one is stored).",
                display_order: 6,
            },
            Field {
                name: PRIMARY,
                kind: Channel,
                default: None,
                required: true,
                tooltip: "The channel to use for the primary segmentation.\nIf you are segmenting cytoplasm, put your cytoplasm channel here.\nIf you are segmenting nuclei, put your nucleus channel here.",
                display_order: 7,
            },
            Field {
                name: SECONDARY,
                kind: Channel,
                default: Some(json!(-1)),
                required: false,
                tooltip: "The channel to use for the secondary segmentation.\nIf you are segmenting cytoplasm, put your nuclei channel here.\nIf you are segmenting nuclei, leave this blank (it will be ignored if filled).",
                display_order: 8,
            },
        ]
    }

    fn ranges(&self, settings: &Settings) -> SharedRanges {
        let t = &settings.training;
        SharedRanges {
            learning_rate: NumberField {
                min: 0.0001,
                max: 0.5,
                default: 0.01,
                tooltip: "The learning rate for the training. 0.01 is a good starting point.",
            },
            // the interface's 100..2000 by default; a deployment may widen it
            epochs: NumberField {
                min: t.min_epochs as f64,
                max: t.max_epochs as f64,
                default: 1000.0,
                tooltip: "The number of epochs to train the model for. 1000 is a good starting point.",
            },
            weight_decay: NumberField {
                min: 0.0,
                max: 0.01,
                default: 0.0001,
                tooltip: "The weight decay for the training.",
            },
            first: 9,
        }
    }

    fn read_channels(
        &self,
        values: &Value,
        err: &mut dyn FnMut(&str, String),
        warnings: &mut Vec<String>,
    ) -> ChannelChoice {
        let nuclear = flag(values, NUCLEAR, false, err);
        let primary = match channel(values.get(PRIMARY)) {
            Ok(Some(c)) => Some(c),
            Ok(None) => {
                err(PRIMARY, "no primary channel selected; choose the channel to segment".into());
                None
            }
            Err(m) => {
                err(PRIMARY, m);
                None
            }
        };
        let mut secondary = channel(values.get(SECONDARY)).unwrap_or_else(|m| {
            err(SECONDARY, m);
            None
        });
        if secondary.is_some() && secondary == primary {
            // one warning for one cause: this replaces the "no secondary channel" one below
            warnings.push("Secondary channel is the same as the primary channel; ignoring it (training on the primary channel only).".into());
            secondary = None;
        } else if nuclear && secondary.is_some() {
            warnings.push("Nuclear model: the secondary channel is ignored.".into());
        } else if !nuclear && secondary.is_none() {
            warnings.push("No secondary (nucleus) channel selected for cytoplasm model training. Proceeding using primary channel only.".into());
        }
        let secondary_channel = if nuclear { None } else { secondary };
        let primary_channel = primary.unwrap_or(0);
        // two crop channels always: Primary, Secondary (zeros without one)
        let slots = vec![
            ChannelSlot { field: PRIMARY.into(), channel: Some(primary_channel) },
            ChannelSlot { field: SECONDARY.into(), channel: secondary_channel },
        ];
        ChannelChoice { slots, primary_channel, secondary_channel, nuclear }
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
}

impl Family for Cpnet {
    type Net = Model;
    type Resume = Resume;

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

    fn train_seg(
        &self,
        job: TrainJob<'_, Self>,
        hooks: &mut dyn TrainHooks<Model>,
    ) -> Result<TrainOutcome, TrainError> {
        let tr = &job.settings.training;
        let precision = crate::precision::resolve(tr.mixed_precision, job.device, ModelFamily::Cpnet);
        tracing::info!(precision = precision.label(), "{}", precision.why);
        let cfg = TrainConfig {
            learning_rate: job.params.learning_rate,
            weight_decay: job.params.weight_decay,
            optimizer: OptimizerKind::Sgd, // NimbusImage's worker trains with SGD=True
            n_epochs: job.params.epochs,
            batch_size: tr.batch_size,
            bsize: tr.bsize,
            seed: job.seed,
            device: job.device,
            mixed_precision: precision.bf16,
            // faster on CUDA and on CPU (oneDNN NHWC kernels); values and saved files are unchanged
            channels_last: true,
            cudnn_benchmark: tr.cudnn_benchmark.resolve(true),
            cuda_graphs: job.device.is_cuda(),
            profile_steps: tr.profile_steps,
            ..Default::default()
        };
        train::train_seg(job.net, job.examples, None, &cfg, hooks, job.control, job.resume)
    }

    fn checkpoint(&self, net: &Model, optim: &Optimizer, state: &TrainState) -> std::io::Result<Vec<u8>> {
        checkpoint::encode(net, optim, state)
    }

    fn score_keeping(
        &self,
        net: &Model,
        examples: &[Example],
        device: Device,
        keep: usize,
    ) -> Result<(ApSummary, Vec<ndarray::Array2<u32>>), JobError> {
        evaluate::score_examples(net, net.net.diam_mean(), examples, device, keep)
            .map_err(|e| JobError::Scoring(e.to_string()))
    }

    fn to_file(&self, net: &Model) -> Result<Bytes, JobError> {
        Ok(Bytes::from(torch_file::state_dict_to_bytes(&net.state_dict())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::family::{check_output_name, validate};
    use crate::job::params::{EPOCHS, LEARNING_RATE, WEIGHT_DECAY};

    /// Settings with the deployment's Epochs range `min..max`.
    fn limits(min: usize, max: usize) -> Settings {
        let mut s = Settings::default();
        (s.training.min_epochs, s.training.max_epochs) = (min, max);
        s
    }

    fn defaults() -> Settings {
        limits(100, 2000)
    }

    fn ok_values() -> Value {
        json!({
            "Base Model": "cyto3", "Nuclear Model?": false, "Output Model Name": "mine",
            "Primary Channel": 0, "Secondary Channel": 1, "Training Tag": ["cell"],
            "Training Region": ["region"], "Learning Rate": 0.01, "Epochs": 1000, "Weight Decay": 0.0001
        })
    }

    #[test]
    fn valid_values_parse_with_reference_channels() {
        let (p, w) = validate(&ok_values(), &Cpnet, &defaults(), &|m| m == "cyto3").unwrap();
        assert_eq!(p.channels(), (1, 2));
        assert_eq!(p.epochs, 1000);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut v = ok_values();
        v["Output Model Name"] = json!("../evil");
        v["Learning Rate"] = json!(2.0);
        v["Epochs"] = json!("lots");
        v["Primary Channel"] = json!(-1);
        v["Training Tag"] = json!([]);
        v["Base Model"] = json!("nope");
        let e = validate(&v, &Cpnet, &defaults(), &|m| m == "cyto3").unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|e| e.field.as_str()).collect();
        for f in
            ["Output Model Name", "Learning Rate", "Epochs", "Primary Channel", "Training Tag", "Base Model"]
        {
            assert!(fields.contains(&f), "{f} not reported: {e}");
        }
    }

    #[test]
    fn model_names_that_would_escape_or_shadow_are_refused() {
        for bad in ["", "a/b", "a\\b", "..", ".", "x\u{7}y", "cyto3", "nuclei", " pad"] {
            assert!(check_output_name(&Cpnet, bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_output_name(&Cpnet, "my cells v2").is_ok());
    }

    #[test]
    fn secondary_equal_to_primary_is_ignored_with_a_warning() {
        let mut v = ok_values();
        v["Secondary Channel"] = json!(0);
        let (p, w) = validate(&v, &Cpnet, &defaults(), &|_| true).unwrap();
        assert_eq!(p.secondary_channel, None);
        assert_eq!(p.channels(), (1, 0));
        assert_eq!(w, ["Secondary channel is the same as the primary channel; ignoring it (training on the primary channel only)."]);
    }

    fn error_of(v: &Value, field: &str) -> String {
        let e = validate(v, &Cpnet, &limits(100, 2000), &|_| true).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].field, field, "{e}");
        e.0[0].message.clone()
    }

    #[test]
    fn numbers_outside_the_ui_ranges_or_not_numbers_say_what_is_allowed() {
        for (field, bad, want) in [
            (LEARNING_RATE, json!(0.00001), "0.00001 is outside the allowed range 0.0001..0.5"),
            (LEARNING_RATE, json!("0.6"), "0.6 is outside the allowed range 0.0001..0.5"),
            (LEARNING_RATE, json!("inf"), "must be a finite number"),
            (LEARNING_RATE, json!([0.1]), "is not a number (got [0.1])"),
            (EPOCHS, json!(99), "99 is outside the allowed range 100..2000"),
            (EPOCHS, json!(2001), "2001 is outside the allowed range 100..2000"),
            (EPOCHS, json!(150.5), "must be a whole number (got 150.5)"),
            (EPOCHS, json!({"n": 1}), "is not a number"),
            (WEIGHT_DECAY, json!(0.02), "0.02 is outside the allowed range 0..0.01"),
            (WEIGHT_DECAY, json!(-1), "outside the allowed range"),
            (WEIGHT_DECAY, json!("NaN"), "must be a finite number"),
        ] {
            let mut v = ok_values();
            v[field] = bad.clone();
            let m = error_of(&v, field);
            assert!(m.contains(want), "{field} = {bad}: {m}");
        }
        // numbers as text and blanks (the default) are accepted, as NimbusImage sends them
        let mut v = ok_values();
        v[LEARNING_RATE] = json!("0.2");
        v[EPOCHS] = json!("");
        let (p, _) = validate(&v, &Cpnet, &defaults(), &|_| true).unwrap();
        assert_eq!((p.learning_rate, p.epochs), (0.2, 1000));
    }

    #[test]
    fn a_deployment_may_widen_the_epoch_range() {
        let mut v = ok_values();
        v[EPOCHS] = json!(3);
        assert!(validate(&v, &Cpnet, &defaults(), &|_| true).is_err());
        let (p, _) = validate(&v, &Cpnet, &limits(1, 5000), &|_| true).unwrap();
        assert_eq!(p.epochs, 3);
    }

    #[test]
    fn channels_must_be_whole_numbers_and_the_primary_is_required() {
        for (bad, want) in [
            (json!(null), "no primary channel selected"),
            (json!(-1), "no primary channel"),
            (json!(1.5), "expected a channel number"),
            (json!("x"), "(got \"x\")"),
        ] {
            let mut v = ok_values();
            v["Primary Channel"] = bad.clone();
            let m = error_of(&v, "Primary Channel");
            assert!(m.contains(want), "{bad}: {m}");
        }
        let mut v = ok_values();
        v["Secondary Channel"] = json!(-2);
        assert!(error_of(&v, "Secondary Channel").contains("-1 for none"));
    }
}
