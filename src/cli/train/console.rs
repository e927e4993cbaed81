//! What a training run shows on the console, for either family: cellpose's warning about dropped
//! images, the step bar, the `--summary-json` file and the last line.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::train;

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
