//! The job from start to end, as its five stages: intake -> fetch -> (evaluate the base) ->
//! train -> evaluate -> upload. One function that the one-shot container mode, the queue worker
//! and the demo all call; each stage takes and returns a typed value, and the one [`Control`]
//! reaches every stage.

use tch::Device;

use super::error::JobError;
use super::evaluate::{evaluate, Scores};
use super::events::Events;
use super::family::Family;
use super::fetch::fetch;
use super::intake::intake;
use super::request::JobRequest;
use super::stages::Step;
use super::train::train;
use super::upload::upload;
use crate::config::Settings;
use crate::control::Control;
use crate::evaluate::ApSummary;
use crate::girder::{GirderClient, User};

/// What the worker brings to a job (the request says what the user asked for).
pub struct JobContext {
    /// Acts as the user who submitted the job (their token).
    pub client: GirderClient,
    /// The user, when the caller has already looked them up (the queue worker's owner check).
    pub user: Option<User>,
    pub settings: Settings,
    pub device: Device,
    /// Unique per job (the Girder job id): temporary upload names, local copies.
    pub job_tag: String,
    /// A checkpoint to continue from (a job taken over from a dead worker), as downloaded:
    /// shared, not copied (a Cellpose-SAM checkpoint is 3.65 GB).
    pub resume: Option<bytes::Bytes>,
    pub seed: u64,
}

/// What a finished job produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobOutcome {
    pub model_name: String,
    pub model_item_id: String,
    pub report_item_id: Option<String>,
    pub n_train: usize,
    pub n_validation: usize,
    pub ap_before: Option<ApSummary>,
    pub ap_after: Option<ApSummary>,
    pub train_losses: Vec<f64>,
    pub resumed_from_epoch: Option<usize>,
    /// The epoch whose weights were uploaded when the best one was kept.
    pub kept_epoch: Option<usize>,
    pub seconds: f64,
}

/// Runs the training job of `family`.
#[tracing::instrument(skip_all, fields(job = %ctx.job_tag))]
pub async fn run_job<F: Family>(
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
    let scores = Scores { n_validation: samples.validation.len(), before, after, sample };
    upload(family, ctx, &plan, trained, scores, events, control).await
}
