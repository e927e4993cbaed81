//! Stage 4, evaluate: AP of a model on the validation crops, for the base model before training
//! and the trained model after, so the report can say whether training helped.

use std::sync::Arc;

use super::error::JobError;
use super::family::Family;
use crate::control::Control;
use crate::evaluate::ApSummary;
use crate::train::Example;

/// AP before and after training (`None` without validation crops).
#[derive(Debug, Clone, Default)]
pub struct Scores {
    /// Validation crops scored.
    pub n_validation: usize,
    pub before: Option<ApSummary>,
    /// The first validation crop's image: the BioImage.IO package's test input.
    pub sample: Option<ndarray::Array3<f32>>,
    pub after: Option<ApSummary>,
}

/// Scores `net` on `validation` on the blocking pool; the network is handed back with the score.
/// A stop abandons the scoring (its thread finishes on its own; its result is dropped).
pub async fn evaluate<F: Family>(
    family: &F,
    net: F::Net,
    validation: &Arc<Vec<Example>>,
    device: tch::Device,
    control: &Control,
) -> Result<(F::Net, Option<ApSummary>), JobError> {
    if validation.is_empty() {
        return Ok((net, None));
    }
    if let Some(r) = control.reason() {
        return Err(r.into());
    }
    let (f, v) = (family.clone(), validation.clone());
    let scoring = crate::telemetry::spawn_blocking_in_span("scoring the validation regions", move || {
        let ap = f.score(&net, &v, device);
        (net, ap)
    });
    let (net, ap) = control.race(scoring).await??;
    let ap = ap?;
    tracing::info!(ap50 = ap.ap50(), images = ap.n_images, "validation scored");
    Ok((net, Some(ap)))
}
