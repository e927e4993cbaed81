//! The Cellpose-SAM family (cellpose 4.2.1.1), as NimbusImage's "Cellpose-SAM retrain" tool
//! trains it, and the one source of that tool's facts: its fields (names, defaults and ranges of
//! NimbusImage's `cellposesam_train` worker: three `channelCheckboxes` input slots, AdamW's
//! learning rate and weight decay; plus this product's Validation Region and Keep best model),
//! its reserved built-in labels, its folder (`Private/.cellposesam/models`), and cellpose 4's
//! `train_seg` with AdamW and its defaults (bsize 256, batch 1, no rescaling, its own schedule:
//! [`crate::train::cpsam::schedule`]), `min_train_masks=1`, models saved as fp32 files that
//! `CellposeModel(pretrained_model=path)` loads. Checkpoints hold the trained weights and AdamW's
//! moments (3.65 GB at full size; see [`crate::train::cpsam::checkpoint`]) and are written every
//! `[training] cpsam_checkpoint_every` epochs and on a shutdown.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::{json, Value};
use tch::Device;

use super::{About, Facts, Family, ResumePoint, TrainJob};
use crate::config::Settings;
use crate::evaluate::{self, ApSummary, MaskOptions};
use crate::job::error::JobError;
use crate::job::params::{Field, FieldKind, NumberField, SharedRanges};
use crate::job::validate::{json_type, ChannelChoice, ChannelSlot, JobParams};
use crate::model::{open_any, registry, AnyModel, CpsamModel, ModelError, ModelFamily};
use crate::predict_cpsam::Cp4Options;
use crate::tool::Tool;
use crate::train::cpsam::checkpoint::encode as encode_checkpoint;
use crate::train::cpsam::{prepare_cp4, train_seg_cpsam, Cp4DataError, Cp4PrepareOptions, CpsamTrainConfig};
use crate::train::{
    Example, Optimizer, RawExample, Resume, TrainError, TrainHooks, TrainOutcome, TrainState,
};
use crate::transforms::Normalize;

/// The Cellpose-SAM family.
#[derive(Debug, Clone, Copy)]
pub struct Cpsam;

/// The notes field; `compute` also tells the tools apart by their fields (see [`SLOTS`]).
pub(crate) const TITLE: &str = "Cellpose-SAM retrain";

/// The Base Model labels NimbusImage shows and the cellpose 4 built-in each stands for, the
/// default first. The labels are reserved: they always mean the built-in.
pub(crate) const BASE_MODELS: [(&str, &str); 2] =
    [("cellpose-sam", "cpsam_v2"), ("cellpose-sam (legacy cpsam)", "cpsam")];

/// The input-slot fields in slot order; Slot 1 is required. cellpose 4 takes at most three
/// input channels.
pub const SLOTS: [&str; 3] = ["Channel for Slot 1", "Channel for Slot 2", "Channel for Slot 3"];

/// The cellpose 4 built-in a Base Model label stands for.
pub(crate) fn builtin_for(label: &str) -> Option<&'static str> {
    BASE_MODELS.iter().find(|(l, _)| *l == label).map(|(_, b)| *b)
}

/// Whether `compute` values are this tool's (they carry a slot field; the CPnet tool's carry
/// `Primary Channel` instead), so either worker image name runs the right job.
pub(crate) fn is_cpsam_values(values: &Value) -> bool {
    SLOTS.iter().any(|s| values.get(*s).is_some()) && values.get("Primary Channel").is_none()
}

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

const ABOUT: About = About {
    tool: Tool::CellposeSam,
    label: "Cellpose-SAM",
    root_folder: ".cellposesam",
    default_base_model: BASE_MODELS[0].0,
};

impl Facts for Cpsam {
    fn about(&self) -> &'static About {
        &ABOUT
    }

    fn own_fields(&self) -> Vec<Field> {
        use FieldKind::*;
        let slot = |i: usize, tooltip: &'static str| Field {
            name: SLOTS[i],
            kind: ChannelCheckboxes,
            default: None,
            required: i == 0,
            tooltip,
            display_order: 3 + i as u32,
        };
        vec![
            Field {
                name: TITLE,
                kind: Notes,
                default: Some(json!(
                    "This tool fine-tunes a Cellpose-SAM model on your corrected annotations. Cellpose-SAM \
                     reads up to three channels directly: pick the channels the model should see, one per slot."
                )),
                required: false,
                tooltip: "",
                display_order: 0,
            },
            Field {
                name: "Base Model",
                kind: Select,
                default: Some(json!(self.default_base_model())),
                required: true,
                tooltip: "The model training starts from.\n\"cellpose-sam\" is the current default checkpoint (cpsam_v2).\n\"cellpose-sam (legacy cpsam)\" is the original April 2025 model.\nYour own models (in your .cellposesam/models folder) are listed too.",
                display_order: 1,
            },
            Field {
                name: "Output Model Name",
                kind: Text,
                default: None,
                required: true,
                tooltip: "The name of the retrained model (saved to your .cellposesam/models folder; an existing model of that name is replaced once the new one is stored).\nIt appears in the Model list of the Cellpose-SAM worker.",
                display_order: 2,
            },
            slot(0, "The channel for the model's first input slot (required). If several are checked, the first is used."),
            slot(1, "The channel for the model's second input slot (optional). If several are checked, the first is used."),
            slot(2, "The channel for the model's third input slot (optional). If several are checked, the first is used."),
        ]
    }

    fn ranges(&self, settings: &Settings) -> SharedRanges {
        let t = &settings.training;
        SharedRanges {
            learning_rate: NumberField {
                min: 0.000001,
                max: 0.1,
                default: 0.00001,
                tooltip: "The learning rate for fine-tuning. Cellpose-SAM fine-tunes best with a small learning rate; 1e-5 (0.00001) is the recommended default.",
            },
            // the reference worker's 10..2000, widened to the deployment's range where it reaches further
            epochs: NumberField {
                min: t.min_epochs.min(10) as f64,
                max: t.max_epochs.max(2000) as f64,
                default: 100.0,
                tooltip: "The number of epochs to train for. 100 is a good starting point for Cellpose-SAM.",
            },
            weight_decay: NumberField {
                min: 0.0,
                max: 1.0,
                default: 0.1,
                tooltip: "The weight decay (AdamW regularization). 0.1 is the Cellpose-SAM default.",
            },
            first: 6,
        }
    }

    /// As NimbusImage's `cellposesam_train` worker reads the slots: Slot 1 required, the first
    /// checked channel of a slot used (with a warning when several are checked), the chosen slots
    /// in order with an empty slot skipped.
    fn read_channels(
        &self,
        values: &Value,
        err: &mut dyn FnMut(&str, String),
        warnings: &mut Vec<String>,
    ) -> ChannelChoice {
        let mut slots = Vec::new();
        for (i, field) in SLOTS.iter().enumerate() {
            match checked_channels(values.get(*field)) {
                Ok(c) if c.is_empty() && i == 0 => {
                    err(field, "no channel selected; Slot 1 is required, check the channel to segment".into())
                }
                Ok(c) if c.is_empty() => {}
                Ok(c) => {
                    if c.len() > 1 {
                        let list = c.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
                        warnings.push(format!(
                            "Multiple channels selected for Slot {} ({list}). Using the first: {}.",
                            i + 1,
                            c[0]
                        ));
                    }
                    slots.push(ChannelSlot { field: format!("Slot {} channel", i + 1), channel: Some(c[0]) });
                }
                Err(m) => err(field, m),
            }
        }
        let channel = |i: usize| slots.get(i).and_then(|s: &ChannelSlot| s.channel);
        ChannelChoice {
            primary_channel: channel(0).unwrap_or(0),
            secondary_channel: channel(1),
            slots,
            nuclear: false,
        }
    }

    /// The reference worker strips blanks around the name.
    fn output_name(&self, raw: &str) -> String {
        raw.trim().to_string()
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
}

/// The checked channels of one `channelCheckboxes` value (`{"0": true, "2": false}`), in
/// ascending channel order (a JSON object's key order is not kept by every client).
fn checked_channels(v: Option<&Value>) -> Result<Vec<u32>, String> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(format!(
                "expected channel checkboxes (an object of channel: true/false), not {}",
                json_type(other)
            ))
        }
    };
    let mut out = Vec::new();
    for (k, on) in obj {
        let checked = match on {
            Value::Bool(b) => *b,
            Value::Null => false,
            other => return Err(format!("channel {k}: expected true or false (got {other})")),
        };
        if !checked {
            continue;
        }
        match k.trim().parse::<u32>() {
            Ok(c) => out.push(c),
            Err(_) => return Err(format!("`{k}` is not a channel number")),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl Family for Cpsam {
    type Net = CpsamModel;
    type Resume = Resume;

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
        if params.slots.len() > SLOTS.len() {
            return Err(JobError::Channel(format!(
                "Cellpose-SAM reads at most {} channels ({} chosen).",
                SLOTS.len(),
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

    fn train_seg(
        &self,
        job: TrainJob<'_, Self>,
        hooks: &mut dyn TrainHooks<CpsamModel>,
    ) -> Result<TrainOutcome, TrainError> {
        let tr = &job.settings.training;
        let precision = crate::precision::resolve(tr.mixed_precision, job.device, ModelFamily::Cpsam);
        tracing::info!(precision = precision.label(), "{}", precision.why);
        let cfg = CpsamTrainConfig {
            learning_rate: job.params.learning_rate,
            weight_decay: job.params.weight_decay,
            n_epochs: job.params.epochs,
            seed: job.seed,
            device: job.device,
            mixed_precision: precision.bf16,
            profile_steps: tr.profile_steps,
            // AdamW, bsize 256, batch 1, no rescaling: cellpose 4 train_seg as the reference calls it
            ..Default::default()
        };
        train_seg_cpsam(job.net, &job.examples, None, &cfg, hooks, job.control, job.resume)
    }

    fn checkpoint(
        &self,
        net: &CpsamModel,
        optim: &Optimizer,
        state: &TrainState,
    ) -> std::io::Result<Vec<u8>> {
        encode_checkpoint(net, optim, state)
    }

    fn score_keeping(
        &self,
        net: &CpsamModel,
        examples: &[Example],
        device: Device,
        keep: usize,
    ) -> Result<(ApSummary, Vec<ndarray::Array2<u32>>), JobError> {
        // the examples are normalised already; cpsam trains and so is scored at native scale
        let opts = Cp4Options {
            normalize: Normalize { normalize: false, ..Default::default() },
            ..Default::default()
        };
        let mut scores = Vec::with_capacity(examples.len());
        let mut kept = Vec::new();
        for (i, e) in examples.iter().enumerate() {
            let seg = evaluate::segment_image_cp4(net, &e.image, &opts, &MaskOptions::default(), device)
                .map_err(|err| JobError::Scoring(format!("{}: {err}", e.name)))?;
            scores.push(
                evaluate::score_masks_cp4(&e.name, &e.labels, &seg.masks)
                    .map_err(|err| JobError::Scoring(format!("{}: {err}", e.name)))?,
            );
            if i < keep {
                kept.push(seg.masks);
            }
        }
        Ok((ApSummary::from_images(scores), kept))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::params::{EPOCHS, LEARNING_RATE, WEIGHT_DECAY};
    use crate::job::validate::ParamErrors;

    fn ok_values() -> Value {
        json!({
            "Base Model": "cellpose-sam", "Output Model Name": "mine",
            "Channel for Slot 1": {"0": true}, "Channel for Slot 2": {},
            "Channel for Slot 3": {"1": false, "2": true}, "Training Tag": ["cell"],
            "Learning Rate": 0.00001, "Epochs": 100, "Weight Decay": 0.1
        })
    }

    fn run(v: &Value) -> Result<(JobParams, Vec<String>), ParamErrors> {
        Cpsam.validate(v, &Settings::default(), &|m| builtin_for(m).is_some() || m == "user")
    }

    #[test]
    fn the_tool_is_told_by_its_fields() {
        assert!(is_cpsam_values(&json!({"Channel for Slot 1": {"0": true}})));
        assert!(!is_cpsam_values(&json!({"Primary Channel": 0})));
        assert!(!is_cpsam_values(&json!({})));
    }

    #[test]
    fn labels_stand_for_the_cellpose4_built_ins() {
        assert_eq!(builtin_for("cellpose-sam"), Some("cpsam_v2"));
        assert_eq!(builtin_for("cellpose-sam (legacy cpsam)"), Some("cpsam"));
        assert_eq!(builtin_for("cpsam_v2"), None);
        let f = Cpsam.fields(&Settings::default());
        let epochs = f.iter().find(|f| f.name == EPOCHS).map(|f| f.kind);
        assert_eq!(epochs, Some(FieldKind::Number { min: 10.0, max: 2000.0, integer: true }));
    }

    #[test]
    fn chosen_slots_are_read_in_order_skipping_empty_ones() {
        let (p, w) = run(&ok_values()).unwrap();
        let chans: Vec<_> = p.slots.iter().map(|s| (s.field.as_str(), s.channel)).collect();
        assert_eq!(chans, [("Slot 1 channel", Some(0)), ("Slot 3 channel", Some(2))]);
        assert_eq!((p.learning_rate, p.epochs, p.weight_decay), (1e-5, 100, 0.1));
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn several_checked_channels_use_the_first_with_a_warning() {
        let mut v = ok_values();
        v["Channel for Slot 1"] = json!({"3": true, "1": true, "2": false});
        let (p, w) = run(&v).unwrap();
        assert_eq!(p.slots[0].channel, Some(1));
        assert_eq!(w, ["Multiple channels selected for Slot 1 (1, 3). Using the first: 1."]);
    }

    #[test]
    fn slot_one_is_required_and_built_in_labels_are_reserved() {
        let mut v = ok_values();
        v["Channel for Slot 1"] = json!({"0": false});
        v["Output Model Name"] = json!("cellpose-sam (legacy cpsam)");
        v["Channel for Slot 2"] = json!([1]);
        let e = run(&v).unwrap_err();
        let got: Vec<&str> = e.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(got, ["Output Model Name", "Channel for Slot 1", "Channel for Slot 2"], "{e}");
        assert!(e.to_string().contains("reserved for a built-in Cellpose-SAM model"), "{e}");
    }

    #[test]
    fn ranges_are_the_cellpose_sam_tools() {
        for (field, bad) in [(LEARNING_RATE, json!(0.2)), (EPOCHS, json!(9)), (WEIGHT_DECAY, json!(1.5))] {
            let mut v = ok_values();
            v[field] = bad;
            let e = run(&v).unwrap_err();
            assert_eq!(e.0.len(), 1, "{e}");
            assert!(e.0[0].message.contains("outside the allowed range"), "{e}");
        }
        let mut v = ok_values();
        v[EPOCHS] = json!(10);
        v["Base Model"] = json!("user");
        assert_eq!(run(&v).unwrap().0.epochs, 10);
    }

    #[test]
    fn keep_best_is_offered_and_on_by_default() {
        let f = Cpsam.fields(&Settings::default());
        let keep =
            f.iter().find(|f| f.name == crate::job::params::KEEP_BEST).expect("a Keep best model field");
        assert_eq!((keep.default.clone(), keep.display_order), (Some(json!(true)), 12));
        assert!(run(&ok_values()).unwrap().0.keep_best);
        let mut v = ok_values();
        v[crate::job::params::KEEP_BEST] = json!(false);
        assert!(!run(&v).unwrap().0.keep_best);
    }
}
