//! The history of one training run with a test set: the base model scored before training, one
//! line per epoch (AP every `every` epochs when asked), the trained model scored after, written
//! as `<model>.metrics.jsonl`, TensorBoard events and `<model>.report.png` next to the model.
//! Scoring is [`crate::evaluate::score_examples`], the worker job's validation, so the CLI and the
//! job report the same numbers for the same data.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tch::Device;

use super::{history_png, plot::PlotError, MetricsLine, MetricsLog, Stage};
use crate::evaluate::{self, ApSummary, EvaluateError};
use crate::model::Model;
use crate::train::{EpochInfo, Example};

/// The held-out set and when to score it.
pub struct Validation {
    /// Prepared like the training images (channels, normalisation, per-image diameter).
    pub examples: Arc<Vec<Example>>,
    /// The model's diam_mean (built-ins: cellpose's fixed value).
    pub diam_mean: f64,
    pub device: Device,
    /// Also score after every N-th epoch (besides before and after training).
    pub every: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("failed to write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("failed to score the test set: {0}")]
    Evaluate(#[from] EvaluateError),
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// Keeps the metrics history of a run; see the module docs.
pub struct RunRecorder {
    log: MetricsLog,
    validation: Option<Validation>,
    t0: Instant,
    pub ap_before: Option<ApSummary>,
    pub ap_after: Option<ApSummary>,
}

/// `<model>.<suffix>` next to the model file.
pub fn beside(model_path: &Path, suffix: &str) -> PathBuf {
    let mut s = model_path.as_os_str().to_owned();
    s.push(format!(".{suffix}"));
    PathBuf::from(s)
}

impl RunRecorder {
    /// Creates `<model>.metrics.jsonl` and, with `log_dir`, a TensorBoard event file in it.
    pub fn create(
        model_path: &Path,
        log_dir: Option<&Path>,
        validation: Option<Validation>,
    ) -> Result<Self, RecordError> {
        let path = Self::metrics_path(model_path);
        if let Some(dir) = log_dir {
            std::fs::create_dir_all(dir)
                .map_err(|source| RecordError::Io { path: dir.to_path_buf(), source })?;
        }
        let log = MetricsLog::create(&path, log_dir).map_err(|source| RecordError::Io { path, source })?;
        Ok(RunRecorder { log, validation, t0: Instant::now(), ap_before: None, ap_after: None })
    }

    pub fn metrics_path(model_path: &Path) -> PathBuf {
        beside(model_path, "metrics.jsonl")
    }

    pub fn report_path(model_path: &Path) -> PathBuf {
        beside(model_path, "report.png")
    }

    pub fn tensorboard_path(&self) -> Option<&Path> {
        self.log.tensorboard_path()
    }

    pub fn lines(&self) -> &[MetricsLine] {
        &self.log.lines
    }

    fn write(&mut self, line: MetricsLine) -> Result<(), RecordError> {
        let path = self.log.path.clone();
        self.log.write(line).map_err(|source| RecordError::Io { path, source })
    }

    fn score(&self, model: &Model) -> Result<Option<ApSummary>, RecordError> {
        match &self.validation {
            Some(v) if !v.examples.is_empty() => {
                Ok(Some(evaluate::score_examples(model, v.diam_mean, &v.examples, v.device)?))
            }
            _ => Ok(None),
        }
    }

    /// Scores the base model (no-op without a test set) and writes the `before` line.
    pub fn before(&mut self, model: &Model) -> Result<Option<&ApSummary>, RecordError> {
        self.ap_before = self.score(model)?;
        if let Some(ap) = self.ap_before.clone() {
            self.write(MetricsLine::validation(Stage::Before, 0, self.t0.elapsed().as_secs_f64(), &ap))?;
        }
        Ok(self.ap_before.as_ref())
    }

    /// Writes the epoch's line, with AP when `every` says so (the last epoch is left to
    /// [`RunRecorder::after`], which scores the saved model).
    pub fn epoch(&mut self, info: &EpochInfo, model: &Model) -> Result<(), RecordError> {
        let mut line = MetricsLine::train(info, self.t0.elapsed().as_secs_f64());
        let done = info.epoch + 1;
        let due =
            self.validation.as_ref().and_then(|v| v.every).is_some_and(|n| n > 0 && done.is_multiple_of(n));
        if due && done < info.n_epochs {
            line.ap = self.score(model)?.map(|ap| ap.by_threshold());
        }
        self.write(line)
    }

    /// Scores the trained model (no-op without a test set) and writes the `after` line.
    pub fn after(&mut self, model: &Model, n_epochs: usize) -> Result<Option<&ApSummary>, RecordError> {
        self.ap_after = self.score(model)?;
        if let Some(ap) = self.ap_after.clone() {
            self.write(MetricsLine::validation(
                Stage::After,
                n_epochs,
                self.t0.elapsed().as_secs_f64(),
                &ap,
            ))?;
        }
        Ok(self.ap_after.as_ref())
    }

    /// Draws the report picture of the history so far into `path`.
    pub fn write_png(&self, path: &Path, title: &str) -> Result<(), RecordError> {
        let png = history_png(title, &self.log.lines)?;
        std::fs::write(path, png).map_err(|source| RecordError::Io { path: path.to_path_buf(), source })
    }
}
