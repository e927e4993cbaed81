//! Stage 2, fetch: the tagged annotations, only the needed parts of the frames, label masks
//! rasterized into the training and validation crops, and those prepared as the family's
//! examples. Stops between requests when the job is stopped.

use std::sync::Arc;

use super::context::JobContext;
use super::dataset;
use super::error::JobError;
use super::events::Events;
use super::family::Family;
use super::intake::Plan;
use super::stages::Step;
use crate::control::Control;
use crate::train::Example;

/// The examples the job trains on and scores with.
pub struct Samples {
    pub train: Arc<Vec<Example>>,
    /// Validation crops (empty without a Validation Tag).
    pub validation: Arc<Vec<Example>>,
}

/// Fetches and rasterizes the job's samples.
pub async fn fetch<F: Family>(
    family: &F,
    ctx: &JobContext,
    plan: &Plan,
    events: &Events,
    control: &Control,
) -> Result<Samples, JobError> {
    let (client, params) = (&ctx.client, &plan.params);
    Step::LoadAnnotations.report(events, "Retrieving annotations from server");
    let tags: Vec<String> = [&params.training_tags, &params.region_tags, &params.validation_tags]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let (annotations, total, seen) =
        control.race(dataset::load_annotations(client, &plan.dataset_id, &tags)).await??;
    tracing::info!(trainable = annotations.len(), total, "annotations loaded");
    if crate::annotations::with_any_tag(&annotations, &params.training_tags).is_empty() {
        // counted over every polygon and rectangle of the dataset, not only the tagged ones
        return Err(JobError::NoTrainingAnnotations { tags: params.training_tags.clone(), total, seen });
    }
    Step::GroupAnnotations.report(events, "Grouping annotations by location");
    Step::LoadImages.report(events, "Loading training images");
    let max_pixels = ctx.settings.training.max_region_pixels;
    let raw =
        dataset::collect_samples(client, &plan.image, params, &annotations, max_pixels, events, control)
            .await?;
    if let Some(r) = control.reason() {
        return Err(r.into());
    }
    let (f, p) = (family.clone(), params.clone());
    let prepared = crate::telemetry::spawn_blocking_in_span("preparing the training data", move || {
        let train = f.prepare(raw.train, &p, false)?;
        let validation = f.prepare(raw.validation, &p, true)?;
        Ok::<_, JobError>((train, validation))
    });
    let (train, validation) = control.race(prepared).await???;
    tracing::info!(train = train.len(), validation = validation.len(), "examples prepared");
    Ok(Samples { train: Arc::new(train), validation: Arc::new(validation) })
}
