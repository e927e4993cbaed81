//! Checking the "Cellpose-SAM retrain" values ([`super::params_cpsam`]) into [`JobParams`], every
//! problem at once, as NimbusImage's `cellposesam_train` worker reads them: Slot 1 required,
//! the first checked channel of a slot used (with a warning when several are checked), the
//! built-in Base Model labels reserved as output names.

use serde_json::Value;

use super::params::{Field, EPOCHS, LEARNING_RATE, WEIGHT_DECAY};
use super::params_cpsam::{builtin_for, DEFAULT_MODEL, SLOTS};
use super::validate::{json_type, number_field, tag_fields, ChannelSlot, JobParams, ParamError, ParamErrors};

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

/// Checks an Output Model Name: the shared name rule, and none of the Base Model labels (a model
/// of that name could never be picked: the label always means the built-in).
pub fn check_output_name(name: &str) -> Result<(), String> {
    crate::model::name::check_model_name(name)?;
    if builtin_for(name).is_some() {
        return Err(format!(
            "\"{name}\" is reserved for a built-in Cellpose-SAM model; choose a different output model name"
        ));
    }
    Ok(())
}

/// Validates the tool's values against `fields`; `known_model` says whether a Base Model exists
/// (a built-in label or one of the user's `.cellposesam` models).
pub fn validate_cpsam(
    values: &Value,
    fields: &[Field],
    known_model: &dyn Fn(&str) -> bool,
) -> Result<(JobParams, Vec<String>), ParamErrors> {
    if !values.is_object() {
        return Err(ParamErrors(vec![ParamError {
            field: "workerInterface".into(),
            message: format!("must be an object of the tool's fields, not {}", json_type(values)),
        }]));
    }
    let mut errs: Vec<ParamError> = Vec::new();
    let mut warnings = Vec::new();
    let mut err = |field: &str, message: String| errs.push(ParamError { field: field.into(), message });
    let learning_rate = number_field(values, fields, LEARNING_RATE, &mut err);
    let epochs = number_field(values, fields, EPOCHS, &mut err) as usize;
    let weight_decay = number_field(values, fields, WEIGHT_DECAY, &mut err);

    let base_model = match values.get("Base Model") {
        None | Some(Value::Null) => DEFAULT_MODEL.to_string(),
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
                "unknown model `{base_model}`: not a built-in model and not in your .cellposesam/models folder"
            ),
        );
    }
    let output_name = match values.get("Output Model Name") {
        Some(Value::String(s)) => s.trim().to_string(),
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    };
    if let Err(m) = check_output_name(&output_name) {
        err("Output Model Name", m);
    }

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
                // as the reference: the chosen slots in order, an empty slot skipped
                slots.push(ChannelSlot { field: format!("Slot {} channel", i + 1), channel: Some(c[0]) });
            }
            Err(m) => err(field, m),
        }
    }

    let (training_tags, region_tags, validation_tags) = tag_fields(values, &mut errs);
    if !errs.is_empty() {
        return Err(ParamErrors(errs));
    }
    let channel = |i: usize| slots.get(i).and_then(|s: &ChannelSlot| s.channel);
    let params = JobParams {
        base_model,
        nuclear: false,
        output_name,
        primary_channel: channel(0).unwrap_or(0),
        secondary_channel: channel(1),
        slots,
        training_tags,
        region_tags,
        validation_tags,
        learning_rate,
        epochs,
        weight_decay,
        // the Cellpose-SAM tool has no "Keep best model" field yet: the last epoch is uploaded
        keep_best: false,
    };
    Ok((params, warnings))
}

#[cfg(test)]
mod tests {
    use super::super::params_cpsam::fields;
    use super::*;
    use serde_json::json;

    fn ok_values() -> Value {
        json!({
            "Base Model": "cellpose-sam", "Output Model Name": "mine",
            "Channel for Slot 1": {"0": true}, "Channel for Slot 2": {},
            "Channel for Slot 3": {"1": false, "2": true}, "Training Tag": ["cell"],
            "Learning Rate": 0.00001, "Epochs": 100, "Weight Decay": 0.1
        })
    }

    fn run(v: &Value) -> Result<(JobParams, Vec<String>), ParamErrors> {
        validate_cpsam(v, &fields(100, 2000), &|m| builtin_for(m).is_some() || m == "user")
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
}
