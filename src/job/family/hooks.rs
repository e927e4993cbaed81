//! A job's training, the same for every family: the family runs its `train_seg`
//! ([`Family::train_seg`]); the hooks here report each epoch, score the validation crops to keep
//! the best epoch ("Keep best model"), and write checkpoints as the family encodes them.

use std::sync::Arc;

use tch::Device;

use super::{Family, Reporter, TrainJob, TrainResult};
use crate::job::error::JobError;
use crate::report::{auto_eval_every, BestModel};
use crate::train::{EpochInfo, Example, Optimizer, TrainError, TrainHooks, TrainState};

/// Trains `job.net` in place with `family`'s `train_seg`, reporting to `reporter`; with "Keep
/// best model" and validation crops, the best-scoring epoch's weights replace the last one's.
pub fn train<F: Family>(
    family: &F,
    job: TrainJob<'_, F>,
    reporter: &Reporter,
) -> Result<TrainResult, JobError> {
    let every = job.settings.training.eval_every;
    let keep = (job.params.keep_best && !job.validation.is_empty()).then(|| KeepBest {
        family,
        validation: job.validation.clone(),
        device: job.device,
        every: (every > 0).then_some(every),
        score_seconds: job.score_seconds,
        best: BestModel::new(),
    });
    let net = job.net;
    let mut hooks = JobHooks { family, reporter, keep };
    let outcome = family.train_seg(job, &mut hooks)?;
    let Some(keep) = hooks.keep else {
        return Ok(TrainResult { outcome, kept_epoch: None, scored: Vec::new() });
    };
    // the best epoch's weights replace the last epoch's (a no-op when the last was the best)
    let kept_epoch = keep.best.restore_into(net)?;
    if let Some(e) = kept_epoch {
        tracing::info!(epoch = e, ap50 = keep.best.best().map(|b| b.ap50), "kept the best-scoring epoch");
    }
    Ok(TrainResult { outcome, kept_epoch, scored: keep.best.history })
}

/// The trainer's hooks for a job: progress and checkpoints through the [`Reporter`], and with
/// a validation set the best-scoring epoch.
struct JobHooks<'a, F: Family> {
    family: &'a F,
    reporter: &'a Reporter,
    keep: Option<KeepBest<'a, F>>,
}

/// Scores the validation crops every `every` epochs (and after the last) and keeps the best.
struct KeepBest<'a, F: Family> {
    family: &'a F,
    validation: Arc<Vec<Example>>,
    device: Device,
    /// `None` until chosen from the first epoch's time ([`auto_eval_every`]).
    every: Option<usize>,
    /// Seconds one scoring took (the base model's, before training).
    score_seconds: Option<f64>,
    best: BestModel<F::Net>,
}

impl<F: Family> KeepBest<'_, F> {
    fn after_epoch(&mut self, e: &EpochInfo, net: &F::Net) {
        let done = e.epoch + 1;
        let every = *self.every.get_or_insert_with(|| match self.score_seconds {
            Some(s) => auto_eval_every(s, e.seconds),
            None => 10,
        });
        if !(done.is_multiple_of(every) || done == e.n_epochs) {
            return;
        }
        // a failed scoring is not worth the training: keep the last epoch instead
        match self.family.score(net, &self.validation, self.device) {
            Ok(ap) => {
                self.best.offer(done, &ap, net);
            }
            Err(err) => tracing::warn!(error = %err, epoch = done, "scoring during training failed"),
        }
    }
}

impl<F: Family> TrainHooks<F::Net> for JobHooks<'_, F> {
    fn on_epoch(
        &mut self,
        e: &EpochInfo,
        net: &F::Net,
        optim: &Optimizer,
        state: &TrainState,
    ) -> Result<(), TrainError> {
        self.reporter.epoch(e);
        if let Some(keep) = &mut self.keep {
            keep.after_epoch(e, net);
        }
        self.reporter.checkpoint_after(e, state, || self.family.checkpoint(net, optim, state));
        Ok(())
    }

    fn on_interrupt(&mut self, net: &F::Net, optim: &Optimizer, state: &TrainState) {
        self.reporter.checkpoint_at(state, || self.family.checkpoint(net, optim, state));
    }
}
