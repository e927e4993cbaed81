//! Stage 4, evaluate: AP of a model on the validation crops, for the base model before training
//! and the trained model after, so the report can say whether training helped.

use std::sync::Arc;

use super::error::JobError;
use super::family::Family;
use crate::control::Control;
use crate::evaluate::ApSummary;
use crate::train::Example;
use ndarray::{Array2, Array3};

/// AP before and after training (`None` without validation crops).
#[derive(Debug, Clone, Default)]
pub struct Scores {
    /// Validation crops scored.
    pub n_validation: usize,
    pub before: Option<ApSummary>,
    /// The first validation crop's image: the BioImage.IO package's test input.
    pub sample: Option<ndarray::Array3<f32>>,
    pub after: Option<ApSummary>,
    /// The first validation crops with both models' masks: the report's overlay picture.
    pub overlay: Vec<OverlayRow>,
}

/// One validation crop as the overlay picture shows it.
#[derive(Debug, Clone)]
pub struct OverlayRow {
    pub name: String,
    /// `[C, H, W]`, normalised as the network saw it.
    pub image: Array3<f32>,
    pub truth: Array2<u32>,
    /// The base model's masks and the trained model's.
    pub before: Array2<u32>,
    pub after: Array2<u32>,
}

/// A model's AP on the validation crops, and its masks on the first [`OVERLAY_IMAGES`].
pub struct Scored {
    pub ap: ApSummary,
    pub masks: Vec<Array2<u32>>,
}

/// Validation crops the report's overlay picture shows.
pub const OVERLAY_IMAGES: usize = crate::report::overlay::MAX_IMAGES;

/// The overlay rows of the first validation crops (none unless both models were scored).
pub fn overlay_rows(
    validation: &[Example],
    before: Option<&Scored>,
    after: Option<&Scored>,
) -> Vec<OverlayRow> {
    let (Some(before), Some(after)) = (before, after) else { return Vec::new() };
    validation
        .iter()
        .zip(before.masks.iter().zip(&after.masks))
        .map(|(e, (b, a))| OverlayRow {
            name: e.name.clone(),
            image: e.image.clone(),
            truth: e.labels.clone(),
            before: b.clone(),
            after: a.clone(),
        })
        .collect()
}

/// Scores `net` on `validation` on the blocking pool, keeping the masks of the first
/// [`OVERLAY_IMAGES`] crops; the network is handed back with the score. A stop abandons the
/// scoring (its thread finishes on its own; its result is dropped).
pub async fn evaluate<F: Family>(
    family: &F,
    net: F::Net,
    validation: &Arc<Vec<Example>>,
    device: tch::Device,
    control: &Control,
) -> Result<(F::Net, Option<Scored>), JobError> {
    if validation.is_empty() {
        return Ok((net, None));
    }
    if let Some(r) = control.reason() {
        return Err(r.into());
    }
    let (f, v) = (family.clone(), validation.clone());
    let scoring = crate::telemetry::spawn_blocking_in_span("scoring the validation regions", move || {
        let ap = f.score_keeping(&net, &v, device, OVERLAY_IMAGES);
        (net, ap)
    });
    let (net, ap) = control.race(scoring).await??;
    let (ap, masks) = ap?;
    tracing::info!(ap50 = ap.ap50(), images = ap.n_images, "validation scored");
    Ok((net, Some(Scored { ap, masks })))
}
