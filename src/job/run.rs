//! The job from start to end, as its five stages: intake -> fetch -> (evaluate the base) ->
//! train -> evaluate -> upload. One function that the one-shot container mode, the queue worker
//! and the demo all call, and the one place where the request's [`Tool`] becomes its family;
//! each stage takes and returns a typed value, and the one [`Control`] reaches every stage.

use super::context::{JobContext, JobOutcome};
use super::error::JobError;
use super::evaluate::{evaluate, overlay_rows, Scores};
use super::events::Events;
use super::family::{Cpnet, Cpsam, Family};
use super::fetch::fetch;
use super::intake::intake;
use super::request::JobRequest;
use super::stages::Step;
use super::train::train;
use super::upload::upload;
use crate::control::Control;
use crate::tool::Tool;

/// Runs the training job `request` asks for, with its tool's family.
#[tracing::instrument(skip_all, fields(job = %ctx.job_tag))]
pub async fn run_job(
    ctx: &JobContext,
    request: &JobRequest,
    events: &Events,
    control: &Control,
) -> Result<JobOutcome, JobError> {
    match request.tool {
        Tool::Cellpose => run_family(&Cpnet, ctx, request, events, control).await,
        Tool::CellposeSam => run_family(&Cpsam, ctx, request, events, control).await,
    }
}

/// The five stages with `family`.
async fn run_family<F: Family>(
    family: &F,
    ctx: &JobContext,
    request: &JobRequest,
    events: &Events,
    control: &Control,
) -> Result<JobOutcome, JobError> {
    let (plan, base) = intake(family, ctx, request, events, control).await?;
    let samples = fetch(family, ctx, &plan, events, control).await?;
    if !samples.validation.is_empty() {
        Step::ScoreBase
            .report(events, format!("Scoring {} on the validation regions", plan.params.base_model));
    }
    // a resumed job scores the base model too: the report compares against it, not the checkpoint
    let t0 = std::time::Instant::now();
    let (base, before) = evaluate(family, base, &samples.validation, ctx.device, control).await?;
    let score_seconds = before.is_some().then(|| t0.elapsed().as_secs_f64());
    let trained = train(family, ctx, &plan, (base, score_seconds), &samples, events, control).await?;
    let (net, after) = evaluate(family, trained.net, &samples.validation, ctx.device, control).await?;
    let trained = super::train::Trained { net, ..trained };
    let sample = samples.validation.first().map(|e| e.image.clone());
    let overlay = overlay_rows(&samples.validation, before.as_ref(), after.as_ref());
    let scores = Scores {
        n_validation: samples.validation.len(),
        before: before.map(|s| s.ap),
        after: after.map(|s| s.ap),
        sample,
        overlay,
    };
    upload(family, ctx, &plan, trained, scores, events, control).await
}
