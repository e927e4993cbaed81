//! Turning the `workerInterface` values NimbusImage sends into checked [`JobParams`], reporting
//! every problem at once (before any download or training) in words a user can act on.

use serde_json::Value;

use super::params::{Field, FieldKind, EPOCHS, KEEP_BEST, LEARNING_RATE, WEIGHT_DECAY};
use crate::model::registry;

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

fn channel(v: Option<&Value>) -> Result<Option<u32>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match number(v) {
            Some(-1.0) => Ok(None),
            Some(n) if n >= 0.0 && n.fract() == 0.0 && n < u32::MAX as f64 => Ok(Some(n as u32)),
            _ => Err(format!("expected a channel number or -1 for none (got {v})")),
        },
    }
}

/// Checks an Output Model Name: the shared name rule ([`crate::model::name`]), and no built-in
/// name, so the user's model never shadows a built-in one in the Base Model list.
pub fn check_model_name(name: &str) -> Result<(), String> {
    crate::model::name::check_model_name(name)?;
    if registry::is_builtin(name) || super::params::BASE_MODELS.contains(&name) {
        return Err(format!(
            "`{name}` is a built-in model name; choose another name so the built-in model is not shadowed"
        ));
    }
    Ok(())
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

/// Validates `values` (the `workerInterface` object) against the field table. `known_model`
/// says whether a Base Model exists (built-in or in the user's Girder models). Returns the
/// parameters and warnings to show the user.
pub fn validate(
    values: &Value,
    fields: &[Field],
    known_model: &dyn Fn(&str) -> bool,
) -> Result<(JobParams, Vec<String>), ParamErrors> {
    let mut errs: Vec<ParamError> = Vec::new();
    let mut warnings = Vec::new();
    let mut err = |field: &str, message: String| errs.push(ParamError { field: field.into(), message });
    let get = |k: &str| values.get(k);
    if !values.is_object() {
        return Err(ParamErrors(vec![ParamError {
            field: "workerInterface".into(),
            message: format!("must be an object of the tool's fields, not {}", json_type(values)),
        }]));
    }

    let learning_rate = number_field(values, fields, LEARNING_RATE, &mut err);
    let epochs = number_field(values, fields, EPOCHS, &mut err) as usize;
    let weight_decay = number_field(values, fields, WEIGHT_DECAY, &mut err);

    let base_model = match get("Base Model") {
        None | Some(Value::Null) => "cyto3".to_string(),
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
                "unknown model `{base_model}`: not a built-in model and not in your .cellpose/models folder"
            ),
        );
    }
    let mut flag = |name: &str, default: bool| match get(name) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(v) => {
            err(name, format!("expected true or false (got {v})"));
            default
        }
    };
    let nuclear = flag("Nuclear Model?", false);
    let keep_best = flag(KEEP_BEST, true);
    let output_name = match get("Output Model Name") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    };
    if let Err(m) = check_model_name(&output_name) {
        err("Output Model Name", m);
    }
    let primary = match channel(get("Primary Channel")) {
        Ok(Some(c)) => Some(c),
        Ok(None) => {
            err("Primary Channel", "no primary channel selected; choose the channel to segment".into());
            None
        }
        Err(m) => {
            err("Primary Channel", m);
            None
        }
    };
    let mut secondary = channel(get("Secondary Channel")).unwrap_or_else(|m| {
        err("Secondary Channel", m);
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
    let (training_tags, region_tags, validation_tags) = tag_fields(values, &mut errs);
    if !errs.is_empty() {
        return Err(ParamErrors(errs));
    }
    let secondary_channel = if nuclear { None } else { secondary };
    let primary_channel = primary.unwrap_or(0);
    let slots = vec![
        ChannelSlot { field: "Primary Channel".into(), channel: Some(primary_channel) },
        ChannelSlot { field: "Secondary Channel".into(), channel: secondary_channel },
    ];
    let params = JobParams {
        base_model,
        nuclear,
        output_name,
        primary_channel,
        secondary_channel,
        slots,
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

#[cfg(test)]
mod tests {
    use super::super::params::{fields, fields_with_limits};
    use super::*;
    use serde_json::json;

    fn ok_values() -> Value {
        json!({
            "Base Model": "cyto3", "Nuclear Model?": false, "Output Model Name": "mine",
            "Primary Channel": 0, "Secondary Channel": 1, "Training Tag": ["cell"],
            "Training Region": ["region"], "Learning Rate": 0.01, "Epochs": 1000, "Weight Decay": 0.0001
        })
    }

    #[test]
    fn valid_values_parse_with_reference_channels() {
        let (p, w) = validate(&ok_values(), &fields(), &|m| m == "cyto3").unwrap();
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
        let e = validate(&v, &fields(), &|m| m == "cyto3").unwrap_err();
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
            assert!(check_model_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_model_name("my cells v2").is_ok());
    }

    #[test]
    fn secondary_equal_to_primary_is_ignored_with_a_warning() {
        let mut v = ok_values();
        v["Secondary Channel"] = json!(0);
        let (p, w) = validate(&v, &fields(), &|_| true).unwrap();
        assert_eq!(p.secondary_channel, None);
        assert_eq!(p.channels(), (1, 0));
        assert_eq!(w, ["Secondary channel is the same as the primary channel; ignoring it (training on the primary channel only)."]);
    }

    fn error_of(v: &Value, field: &str) -> String {
        let e = validate(v, &fields_with_limits(100, 2000), &|_| true).unwrap_err();
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
        let (p, _) = validate(&v, &fields(), &|_| true).unwrap();
        assert_eq!((p.learning_rate, p.epochs), (0.2, 1000));
    }

    #[test]
    fn a_deployment_may_widen_the_epoch_range() {
        let mut v = ok_values();
        v[EPOCHS] = json!(3);
        assert!(validate(&v, &fields(), &|_| true).is_err());
        let (p, _) = validate(&v, &fields_with_limits(1, 5000), &|_| true).unwrap();
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
