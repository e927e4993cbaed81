//! The training job's parameters: one table that the `interface` request, validation and the
//! README all read (NimbusImage's "Cellpose retrain" fields, plus Validation Region).

use serde_json::{json, Map, Value};

/// NimbusImage's `BASE_MODELS`: the built-ins the interface offers, each only when its weight
/// file is in the models folder.
pub const BASE_MODELS: [&str; 4] = ["cyto", "cyto2", "cyto3", "nuclei"];

/// What kind of widget a field is in NimbusImage's interface.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldKind {
    Notes,
    Select,
    Checkbox,
    Text,
    Channel,
    /// One checkbox per channel (Cellpose-SAM's input slots); the value is `{"0": true, ...}`.
    ChannelCheckboxes,
    Tags,
    Number {
        min: f64,
        max: f64,
        integer: bool,
    },
}

/// One interface field.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: &'static str,
    pub kind: FieldKind,
    pub default: Option<Value>,
    pub required: bool,
    pub tooltip: &'static str,
    pub display_order: u32,
}

pub const LEARNING_RATE: &str = "Learning Rate";
pub const EPOCHS: &str = "Epochs";
pub const WEIGHT_DECAY: &str = "Weight Decay";
pub const KEEP_BEST: &str = "Keep best model";

/// The fields, in display order. Epoch bounds are the interface's; deployments may widen them
/// (`[training] min_epochs/max_epochs`), see [`fields_with_limits`].
pub fn fields() -> Vec<Field> {
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
            default: Some(json!("cyto3")),
            required: true,
            tooltip: "This model is the one used as a base for training.\ncyto3 is the most accurate for cells, whereas nuclei is best for finding nuclei.\nYour own models (in your .cellpose/models folder) are listed too.",
            display_order: 4,
        },
        Field {
            name: "Nuclear Model?",
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
            name: "Primary Channel",
            kind: Channel,
            default: None,
            required: true,
            tooltip: "The channel to use for the primary segmentation.\nIf you are segmenting cytoplasm, put your cytoplasm channel here.\nIf you are segmenting nuclei, put your nucleus channel here.",
            display_order: 7,
        },
        Field {
            name: "Secondary Channel",
            kind: Channel,
            default: Some(json!(-1)),
            required: false,
            tooltip: "The channel to use for the secondary segmentation.\nIf you are segmenting cytoplasm, put your nuclei channel here.\nIf you are segmenting nuclei, leave this blank (it will be ignored if filled).",
            display_order: 8,
        },
        Field {
            name: "Training Tag",
            kind: Tags,
            default: None,
            required: true,
            tooltip: "Train the model on objects that have this tag.",
            display_order: 9,
        },
        Field {
            name: "Training Region",
            kind: Tags,
            default: None,
            required: false,
            tooltip: "These objects define the regions that the training will be performed on.\nIf you do not select any objects, the training will be performed on all objects in the image.\nYou can and probably should select multiple regions.",
            display_order: 10,
        },
        Field {
            name: "Validation Region",
            kind: Tags,
            default: None,
            required: false,
            tooltip: "Objects with this tag mark held-out regions (not trained on). The base and the trained model are both scored there (average precision at IoU 0.5/0.75/0.9), so you can see whether retraining helped.",
            display_order: 11,
        },
        Field {
            name: LEARNING_RATE,
            kind: Number { min: 0.0001, max: 0.5, integer: false },
            default: Some(json!(0.01)),
            required: false,
            tooltip: "The learning rate for the training. 0.01 is a good starting point.",
            display_order: 12,
        },
        Field {
            name: EPOCHS,
            kind: Number { min: 100.0, max: 2000.0, integer: true },
            default: Some(json!(1000)),
            required: false,
            tooltip: "The number of epochs to train the model for. 1000 is a good starting point.",
            display_order: 13,
        },
        Field {
            name: WEIGHT_DECAY,
            kind: Number { min: 0.0, max: 0.01, integer: false },
            default: Some(json!(0.0001)),
            required: false,
            tooltip: "The weight decay for the training.",
            display_order: 14,
        },
        Field {
            name: KEEP_BEST,
            kind: Checkbox,
            default: Some(json!(true)),
            required: false,
            tooltip: "With a Validation Region: score the model on it during training and upload the epoch with the best average precision (IoU 0.5), not simply the last one. The report names the epoch.",
            display_order: 15,
        },
    ]
}

/// The table with the deployment's epoch range applied.
pub fn fields_with_limits(min_epochs: usize, max_epochs: usize) -> Vec<Field> {
    fields()
        .into_iter()
        .map(|mut f| {
            if f.name == EPOCHS {
                f.kind = FieldKind::Number { min: min_epochs as f64, max: max_epochs as f64, integer: true };
            }
            f
        })
        .collect()
}

/// The JSON NimbusImage stores for the worker image (`POST /worker_interface?image=`).
/// `models` are the Base Model choices (sorted, de-duplicated here).
pub fn interface_json(fields: &[Field], models: &[String]) -> Value {
    let mut items: Vec<String> = models.to_vec();
    items.sort();
    items.dedup();
    let mut out = Map::new();
    for f in fields {
        let mut o = Map::new();
        let ty = match f.kind {
            FieldKind::Notes => "notes",
            FieldKind::Select => "select",
            FieldKind::Checkbox => "checkbox",
            FieldKind::Text => "text",
            FieldKind::Channel => "channel",
            FieldKind::ChannelCheckboxes => "channelCheckboxes",
            FieldKind::Tags => "tags",
            FieldKind::Number { .. } => "number",
        };
        o.insert("type".into(), json!(ty));
        if let FieldKind::Notes = f.kind {
            o.insert("value".into(), f.default.clone().unwrap_or(Value::Null));
        } else if let Some(d) = &f.default {
            o.insert("default".into(), d.clone());
        }
        if let FieldKind::Number { min, max, integer } = f.kind {
            let num = |v: f64| if integer { json!(v as i64) } else { json!(v) };
            o.insert("min".into(), num(min));
            o.insert("max".into(), num(max));
        }
        if let FieldKind::Select = f.kind {
            o.insert("items".into(), json!(items));
            o.insert("noCache".into(), json!(true));
        }
        if !f.tooltip.is_empty() {
            o.insert("tooltip".into(), json!(f.tooltip));
        }
        if matches!(f.kind, FieldKind::Channel | FieldKind::Tags) {
            o.insert("required".into(), json!(f.required));
        }
        o.insert("displayOrder".into(), json!(f.display_order));
        out.insert(f.name.to_string(), Value::Object(o));
    }
    Value::Object(out)
}
