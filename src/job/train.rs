//! Stage 3, train: fine-tunes the base network on the samples with the family's `train_seg`
//! semantics on the blocking pool, resuming from a checkpoint when the job was taken over from
//! another worker. Progress, epochs and checkpoints go out as events; a cancel stops within one
//! step, a shutdown checkpoints first.

use super::context::JobContext;
use super::error::JobError;
use super::events::{checkpoint_label, Events};
use super::family::{Family, Reporter, TrainJob, TrainResult};
use super::fetch::Samples;
use super::intake::Plan;
use super::stages::Step;
use crate::control::Control;
use crate::report::ScoredEpoch;
use crate::train::TrainOutcome;
use std::time::Duration;

/// The trained network and how training went.
pub struct Trained<F: Family> {
    pub net: F::Net,
    /// Training crops.
    pub n_train: usize,
    pub outcome: TrainOutcome,
    /// Epochs done by earlier workers when this one resumed the job.
    pub resumed_from_epoch: Option<usize>,
    /// The epoch whose weights `net` holds when the best one was kept (see [`TrainResult`]).
    pub kept_epoch: Option<usize>,
    /// Validation AP@0.5 of each epoch scored during training.
    pub scored: Vec<ScoredEpoch>,
}

/// Trains `base`; `score_seconds` is how long scoring the validation crops took (the base
/// model's scoring), from which the interval of scorings for the best epoch is chosen.
pub async fn train<F: Family>(
    family: &F,
    ctx: &JobContext,
    plan: &Plan,
    (base, score_seconds): (F::Net, Option<f64>),
    samples: &Samples,
    events: &Events,
    control: &Control,
) -> Result<Trained<F>, JobError> {
    if let Some(r) = control.reason() {
        return Err(r.into());
    }
    let n_train = samples.train.len();
    Step::Training.report(events, format!("Training with {n_train} images, be patient..."));
    let (f, params, settings, device, seed) =
        (family.clone(), plan.params.clone(), ctx.settings.clone(), ctx.device, ctx.seed);
    let (examples, resume_bytes, control_t) = (samples.train.clone(), ctx.resume.clone(), control.clone());
    let validation = samples.validation.clone();
    let reporter = Reporter::new(
        events.clone(),
        family.checkpoint_every(&ctx.settings),
        Duration::from_secs_f64(ctx.settings.training.progress_interval_s),
    );
    let run = crate::telemetry::spawn_blocking_in_span("training", move || {
        let net = base;
        let mut resumed_from_epoch = None;
        let resume = match &resume_bytes {
            Some(bytes) => {
                let (resume, at) = f.resume(bytes, &net)?;
                resumed_from_epoch = Some(at.epoch);
                reporter.events.warning(
                    format!("Resuming from the checkpoint after {}.", checkpoint_label(at.epoch, at.step)),
                    "A previous worker stopped while training this job.",
                );
                Some(resume)
            }
            None => None,
        };
        let job = TrainJob {
            net: &net,
            examples,
            params: &params,
            settings: &settings,
            device,
            seed,
            resume,
            control: &control_t,
            validation,
            score_seconds,
        };
        let TrainResult { outcome, kept_epoch, scored } = super::family::train(&f, job, &reporter)?;
        Ok::<_, JobError>(Trained { net, n_train, outcome, resumed_from_epoch, kept_epoch, scored })
    });
    // not raced against the control: the trainer itself stops within one step (and a shutdown
    // must wait for its checkpoint); `serve` bounds the wait by the shutdown grace
    let trained = run.await??;
    if let Some(r) = control.reason() {
        return Err(r.into());
    }
    Ok(trained)
}
