//! The "Cellpose-SAM retrain" tool's fields: one table that `interface`, validation and the
//! README read. Names, defaults and ranges are those of NimbusImage's `cellposesam_train` worker
//! (three `channelCheckboxes` input slots, AdamW's learning rate and weight decay), plus this
//! product's Validation Region.

use serde_json::json;

use super::params::{Field, FieldKind, EPOCHS, LEARNING_RATE, WEIGHT_DECAY};

/// The notes field; `compute` also tells the tools apart by their fields (see [`SLOTS`]).
pub const TITLE: &str = "Cellpose-SAM retrain";

/// The Base Model labels NimbusImage shows and the cellpose 4 built-in each stands for, the
/// default first. The labels are reserved: they always mean the built-in.
pub const BASE_MODELS: [(&str, &str); 2] =
    [("cellpose-sam", "cpsam_v2"), ("cellpose-sam (legacy cpsam)", "cpsam")];

/// The Base Model offered by default (cpsam_v2).
pub const DEFAULT_MODEL: &str = "cellpose-sam";

/// The input-slot fields in slot order; Slot 1 is required.
pub const SLOTS: [&str; 3] = ["Channel for Slot 1", "Channel for Slot 2", "Channel for Slot 3"];

/// The cellpose 4 built-in a Base Model label stands for.
pub fn builtin_for(label: &str) -> Option<&'static str> {
    BASE_MODELS.iter().find(|(l, _)| *l == label).map(|(_, b)| *b)
}

/// The fields, in display order, with the reference worker's Epochs range (10..2000) widened to
/// the deployment's `[training] min_epochs/max_epochs` where those reach further.
pub fn fields(min_epochs: usize, max_epochs: usize) -> Vec<Field> {
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
            default: Some(json!(DEFAULT_MODEL)),
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
        Field {
            name: "Training Tag",
            kind: Tags,
            default: None,
            required: true,
            tooltip: "Train the model on objects that have this tag.",
            display_order: 6,
        },
        Field {
            name: "Training Region",
            kind: Tags,
            default: None,
            required: false,
            tooltip: "These objects define the regions that the training will be performed on.\nIf you do not select any objects, the training will be performed on all objects in the image.\nYou can and probably should select multiple regions.",
            display_order: 7,
        },
        Field {
            name: "Validation Region",
            kind: Tags,
            default: None,
            required: false,
            tooltip: "Objects with this tag mark held-out regions (not trained on). The base and the trained model are both scored there (average precision at IoU 0.5/0.75/0.9), so you can see whether retraining helped.",
            display_order: 8,
        },
        Field {
            name: LEARNING_RATE,
            kind: Number { min: 0.000001, max: 0.1, integer: false },
            default: Some(json!(0.00001)),
            required: false,
            tooltip: "The learning rate for fine-tuning. Cellpose-SAM fine-tunes best with a small learning rate; 1e-5 (0.00001) is the recommended default.",
            display_order: 9,
        },
        Field {
            name: EPOCHS,
            kind: Number { min: min_epochs.min(10) as f64, max: max_epochs.max(2000) as f64, integer: true },
            default: Some(json!(100)),
            required: false,
            tooltip: "The number of epochs to train for. 100 is a good starting point for Cellpose-SAM.",
            display_order: 10,
        },
        Field {
            name: WEIGHT_DECAY,
            kind: Number { min: 0.0, max: 1.0, integer: false },
            default: Some(json!(0.1)),
            required: false,
            tooltip: "The weight decay (AdamW regularization). 0.1 is the Cellpose-SAM default.",
            display_order: 11,
        },
    ]
}

/// Whether `compute` values are this tool's (they carry a slot field; the CPnet tool's carry
/// `Primary Channel` instead), so either worker image name runs the right job.
pub fn is_cpsam_values(values: &serde_json::Value) -> bool {
    SLOTS.iter().any(|s| values.get(*s).is_some()) && values.get("Primary Channel").is_none()
}

/// Whether the worker image an `interface` request names is the Cellpose-SAM tool's: the
/// interface request carries only the image name, and NimbusImage names that worker
/// `...cellposesam_train...` (a name with `cellpose-sam` counts too).
pub fn is_cpsam_image(image: &str) -> bool {
    let lower = image.to_ascii_lowercase();
    lower.contains("cellposesam") || lower.contains("cellpose-sam")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_tools_are_told_apart_by_fields_and_image_names() {
        assert!(is_cpsam_values(&json!({"Channel for Slot 1": {"0": true}})));
        assert!(!is_cpsam_values(&json!({"Primary Channel": 0})));
        assert!(!is_cpsam_values(&json!({})));
        assert!(is_cpsam_image("nimbusimage/cellposesam_train:latest"));
        assert!(is_cpsam_image("lab/Cellpose-SAM-worker"));
        assert!(!is_cpsam_image("nimbusimage/cellpose_train:latest"));
    }

    #[test]
    fn labels_stand_for_the_cellpose4_built_ins() {
        assert_eq!(builtin_for("cellpose-sam"), Some("cpsam_v2"));
        assert_eq!(builtin_for("cellpose-sam (legacy cpsam)"), Some("cpsam"));
        assert_eq!(builtin_for("cpsam_v2"), None);
        let f = fields(100, 2000);
        let epochs = f.iter().find(|f| f.name == EPOCHS).map(|f| f.kind);
        assert_eq!(epochs, Some(FieldKind::Number { min: 10.0, max: 2000.0, integer: true }));
    }
}
