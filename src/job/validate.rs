//! The checked job parameters ([`JobParams`]) and the readers of the `workerInterface` values
//! NimbusImage sends, each problem reported with its field in words a user can act on. The
//! values are checked as a whole, every problem at once and before any download or training, by
//! [`super::family::Facts::validate`]: what both tools share once, each tool's channels by its
//! family.

use serde_json::Value;

use super::params::{Field, FieldKind};

/// Validated job parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobParams {
    pub base_model: String,
    pub nuclear: bool,
    pub output_name: String,
    pub primary_channel: u32,
    /// `None` when the user left it at -1 (or it equalled the primary channel).
    pub secondary_channel: Option<u32>,
    /// The channels of each training crop, in order: the fetch reads slot `i` into channel `i`
    /// of the crop, and a slot without a channel stays zeros. CPnet: Primary, Secondary (so its
    /// crops are always two channels); Cellpose-SAM: the chosen slots, in order.
    pub slots: Vec<ChannelSlot>,
    pub training_tags: Vec<String>,
    pub region_tags: Vec<String>,
    pub validation_tags: Vec<String>,
    pub learning_rate: f64,
    pub epochs: usize,
    pub weight_decay: f64,
    /// Upload the best-scoring epoch on the validation regions rather than the last.
    pub keep_best: bool,
}

impl JobParams {
    /// cellpose channels as the reference worker chooses them: nuclear -> [1,0]; cytoplasm with a
    /// secondary channel -> [1,2]; without -> [1,0].
    pub fn channels(&self) -> (usize, usize) {
        if self.nuclear || self.secondary_channel.is_none() {
            (1, 0)
        } else {
            (1, 2)
        }
    }
}

/// One channel of the training crops and the field that chose it (for messages).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChannelSlot {
    pub field: String,
    pub channel: Option<u32>,
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    pub field: String,
    pub message: String,
}

/// Every problem found, shown as one message per line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct ParamErrors(pub Vec<ParamError>);

pub(crate) fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

pub(crate) fn tags(v: Option<&Value>) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or_else(|| format!("tags must be strings (got {t})")))
            .filter(|r| !matches!(r, Ok(s) if s.is_empty()))
            .collect(),
        Some(other) => Err(format!("expected a list of tags (got {other})")),
    }
}

/// A channel number or -1 (none), as NimbusImage's `channel` fields send them.
pub(crate) fn channel(v: Option<&Value>) -> Result<Option<u32>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match number(v) {
            Some(-1.0) => Ok(None),
            Some(n) if n >= 0.0 && n.fract() == 0.0 && n < u32::MAX as f64 => Ok(Some(n as u32)),
            _ => Err(format!("expected a channel number or -1 for none (got {v})")),
        },
    }
}

/// A checkbox field (`true`/`false`, also as text), `default` when missing; a problem goes to
/// `err`.
pub(crate) fn flag(values: &Value, name: &str, default: bool, err: &mut dyn FnMut(&str, String)) -> bool {
    match values.get(name) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(v) => {
            err(name, format!("expected true or false (got {v})"));
            default
        }
    }
}

/// The value of the number field `name`, checked against its range in `fields` (blank or
/// missing: its default); a problem goes to `err` and the default is returned.
pub(crate) fn number_field(
    values: &Value,
    fields: &[Field],
    name: &str,
    err: &mut dyn FnMut(&str, String),
) -> f64 {
    let f = fields.iter().find(|f| f.name == name);
    let (min, max, integer, default) = match f.map(|f| (f.kind, f.default.clone())) {
        Some((FieldKind::Number { min, max, integer }, d)) => {
            (min, max, integer, d.and_then(|d| number(&d)).unwrap_or(min))
        }
        _ => (f64::NEG_INFINITY, f64::INFINITY, false, 0.0),
    };
    match values.get(name) {
        None | Some(Value::Null) => default,
        Some(Value::String(s)) if s.trim().is_empty() => default,
        Some(v) => match number(v) {
            Some(n) if !n.is_finite() => {
                err(name, format!("must be a finite number (got {v})"));
                default
            }
            Some(n) if n < min || n > max => {
                err(name, format!("{n} is outside the allowed range {min}..{max}"));
                default
            }
            Some(n) if integer && n.fract() != 0.0 => {
                err(name, format!("must be a whole number (got {n})"));
                default
            }
            Some(n) => n,
            None => {
                err(name, format!("is not a number (got {v})"));
                default
            }
        },
    }
}

/// What kind of JSON value `v` is, for messages ("a string", "null", ...).
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null (missing)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The three tag fields both tools share (Training Tag, Training Region, Validation Region),
/// with their two rules: a training tag is required, and a validation tag may not also be a
/// training tag or region (scoring on trained pixels would flatter the model). Problems are
/// added to `errs`.
pub(crate) fn tag_fields(
    values: &Value,
    errs: &mut Vec<ParamError>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut tag_field = |name: &str| {
        tags(values.get(name)).unwrap_or_else(|m| {
            errs.push(ParamError { field: name.into(), message: m });
            Vec::new()
        })
    };
    let training_tags = tag_field("Training Tag");
    let region_tags = tag_field("Training Region");
    let validation_tags = tag_field("Validation Region");
    if training_tags.is_empty() && !errs.iter().any(|e| e.field == "Training Tag") {
        errs.push(ParamError {
            field: "Training Tag".into(),
            message: "no training tag selected; choose the tag of your training annotations".into(),
        });
    }
    if let Some(t) = validation_tags.iter().find(|t| training_tags.contains(t) || region_tags.contains(t)) {
        errs.push(ParamError {
            field: "Validation Region".into(),
            message: format!(
                "tag `{t}` is also a training tag or region; validation must use regions not trained on"
            ),
        });
    }
    (training_tags, region_tags, validation_tags)
}

/// The channels a tool's fields chose (its family reads them: [`Facts::read_channels`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChannelChoice {
    /// The crop channels in order (see [`JobParams::slots`]).
    pub slots: Vec<ChannelSlot>,
    pub primary_channel: u32,
    pub secondary_channel: Option<u32>,
    /// CPnet's "Nuclear Model?" (only the primary channel is used).
    pub nuclear: bool,
}
