//! The tools' interface fields: what a field is ([`Field`]), the fields both tools share, built
//! once with each tool's ranges ([`shared_fields`]), and the JSON NimbusImage stores
//! ([`interface_json`]). Each tool's own fields (base model, output name, channels) are its
//! family's facts ([`super::family`]); `interface`, validation and the README read the one table.

use serde_json::{json, Map, Value};

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

pub(crate) const LEARNING_RATE: &str = "Learning Rate";
pub const EPOCHS: &str = "Epochs";
pub(crate) const WEIGHT_DECAY: &str = "Weight Decay";
pub(crate) const KEEP_BEST: &str = "Keep best model";

/// One number field as a tool offers it: its range, its default and what its tooltip says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumberField {
    pub min: f64,
    pub max: f64,
    pub default: f64,
    pub tooltip: &'static str,
}

/// What the fields both tools share differ in from tool to tool (each family's facts).
#[derive(Debug, Clone, Copy)]
pub struct SharedRanges {
    pub learning_rate: NumberField,
    /// Whole epochs; the deployment's `[training] min_epochs/max_epochs` already applied.
    pub epochs: NumberField,
    pub weight_decay: NumberField,
    /// Display order of the first shared field (the tool's own fields come before).
    pub first: u32,
}

/// The fields both tools share, in display order from `ranges.first`: Training Tag, Training
/// Region, Validation Region, Learning Rate, Epochs, Weight Decay, Keep best model.
pub(crate) fn shared_fields(ranges: &SharedRanges) -> Vec<Field> {
    use FieldKind::*;
    let number = |name, f: NumberField, integer: bool| Field {
        name,
        kind: Number { min: f.min, max: f.max, integer },
        default: Some(if integer { json!(f.default as i64) } else { json!(f.default) }),
        required: false,
        tooltip: f.tooltip,
        display_order: 0,
    };
    let mut fields = vec![
        Field {
            name: "Training Tag",
            kind: Tags,
            default: None,
            required: true,
            tooltip: "Train the model on objects that have this tag.",
            display_order: 0,
        },
        Field {
            name: "Training Region",
            kind: Tags,
            default: None,
            required: false,
            tooltip: "These objects define the regions that the training will be performed on.\nIf you do not select any objects, the training will be performed on all objects in the image.\nYou can and probably should select multiple regions.",
            display_order: 0,
        },
        Field {
            name: "Validation Region",
            kind: Tags,
            default: None,
            required: false,
            tooltip: "Objects with this tag mark held-out regions (not trained on). The base and the trained model are both scored there (average precision at IoU 0.5/0.75/0.9), so you can see whether retraining helped.",
            display_order: 0,
        },
        number(LEARNING_RATE, ranges.learning_rate, false),
        number(EPOCHS, ranges.epochs, true),
        number(WEIGHT_DECAY, ranges.weight_decay, false),
        Field {
            name: KEEP_BEST,
            kind: Checkbox,
            default: Some(json!(true)),
            required: false,
            tooltip: "With a Validation Region: score the model on it during training and upload the epoch with the best average precision (IoU 0.5), not simply the last one. The report names the epoch.",
            display_order: 0,
        },
    ];
    for (i, f) in fields.iter_mut().enumerate() {
        f.display_order = ranges.first + i as u32;
    }
    fields
}

/// The JSON NimbusImage stores for the worker image (`POST /worker_interface?image=`).
/// `models` are the Base Model choices (sorted, de-duplicated here).
pub(crate) fn interface_json(fields: &[Field], models: &[String]) -> Value {
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
