//! What a training run shows on the console, for either family: cellpose's warning about dropped
//! images, the step bar and cellpose's per-epoch log line ([`BarHooks`]), the `--summary-json`
//! file and the last line.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::report::CellposeEpochLog;
use crate::train::{self, EpochInfo, Optimizer, StepInfo, TrainError, TrainHooks, TrainState};

/// What the family adds after each epoch (the CPnet run's metrics history); an error is worth a
/// warning, not the training.
pub(super) type Record<'a, M> = Box<dyn FnMut(&EpochInfo, &M) -> anyhow::Result<()> + 'a>;

/// The hooks of a command-line run of a network `M`: the step bar on stderr, cellpose's log
/// line at cellpose's epochs (on stdout too with `--verbose`), the saved-model lines, and the
/// family's `record` of each epoch.
pub(super) struct BarHooks<'a, M> {
    pub bar: ProgressBar,
    log: CellposeEpochLog,
    verbose: bool,
    record: Record<'a, M>,
}

impl<'a, M> BarHooks<'a, M> {
    pub fn new(bar: ProgressBar, verbose: bool, record: Record<'a, M>) -> Self {
        BarHooks { bar, log: CellposeEpochLog::new(), verbose, record }
    }
}

impl<M> TrainHooks<M> for BarHooks<'_, M> {
    fn on_step(&mut self, s: &StepInfo) {
        self.bar.set_position((s.epoch * s.steps_per_epoch + s.step + 1) as u64);
    }

    fn on_epoch(
        &mut self,
        e: &EpochInfo,
        model: &M,
        _o: &Optimizer,
        _s: &TrainState,
    ) -> Result<(), TrainError> {
        let test = e.test_loss.map(|t| format!(" test {t:.4}")).unwrap_or_default();
        self.bar.set_message(format!("epoch {} loss {:.4}{test} lr {:.2e}", e.epoch, e.train_loss, e.lr));
        if let Some(line) = self.log.observe(e) {
            let verbose = self.verbose;
            self.bar.suspend(|| {
                tracing::info!("{line}");
                if verbose {
                    println!("{line}");
                }
            });
        }
        if let Err(err) = (self.record)(e, model) {
            // the metrics history is a report, not the product: training goes on
            self.bar.suspend(|| tracing::warn!(error = %err, "could not record epoch {}", e.epoch));
        }
        Ok(())
    }

    fn on_saved(&mut self, path: &Path, epoch: usize) {
        self.bar.suspend(|| tracing::info!(epoch, path = %path.display(), "saved model"));
    }
}

/// cellpose's warning about training images dropped for having too few masks.
pub(super) fn warn_removed(prepared: &train::Prepared, min_train_masks: usize) {
    if !prepared.removed.is_empty() {
        tracing::warn!(
            "{} train images with number of masks less than min_train_masks ({}), removing from train set: {}",
            prepared.removed.len(),
            min_train_masks,
            prepared.removed.iter().map(|(n, k)| format!("{n} ({k} masks)")).collect::<Vec<_>>().join(", ")
        );
    }
}

/// A progress bar over every training step of the run.
pub(super) fn step_bar(n_epochs: usize, images_per_epoch: usize, batch_size: usize) -> ProgressBar {
    let bar = ProgressBar::new((n_epochs * images_per_epoch.div_ceil(batch_size)) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// `--summary-json`: the run's summary document.
pub(super) fn write_summary(path: &Path, doc: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(doc)?)
        .with_context(|| format!("failed to write {}", path.display()))
}

/// cellpose's last line of a training run; the run succeeded.
pub(super) fn trained(save_path: &Path, outcome: &train::TrainOutcome) -> ExitCode {
    eprintln!(
        ">>>> model trained and saved to {} (final train loss {:.4}, diam_labels {:.2}, {:.3} s/step)",
        save_path.display(),
        outcome.train_losses.last().copied().unwrap_or(f64::NAN),
        outcome.diam_labels,
        outcome.seconds_per_step
    );
    ExitCode::SUCCESS
}
