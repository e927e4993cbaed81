//! The history of one training run with a test set: the base model scored before training, one
//! line per epoch (AP every `every` epochs when asked), the trained model scored after, written
//! as `<model>.metrics.jsonl`, TensorBoard events and `<model>.report.png` next to the model,
//! and the masks of the first test images before and after for `<model>.overlay.png`.
//! Scoring is [`crate::evaluate::score_examples`], the worker job's validation, so the CLI and the
//! job report the same numbers for the same data.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ndarray::Array2;
use tch::Device;

use super::{history_png, plot::PlotError, BestModel, MetricsLine, MetricsLog, Stage};
use crate::evaluate::{self, ApSummary, EvaluateError};
use crate::model::Model;
use crate::train::{EpochInfo, Example};

/// A scoring's summary and the masks it kept.
type ScoredMasks = (ApSummary, Vec<Array2<u32>>);

/// The held-out set and when to score it.
pub struct Validation {
    /// Prepared like the training images (channels, normalisation, per-image diameter).
    pub examples: Arc<Vec<Example>>,
    /// The model's diam_mean (built-ins: cellpose's fixed value).
    pub diam_mean: f64,
    pub device: Device,
    /// Also score after every N-th epoch (besides before and after training); each scored
    /// epoch is a candidate for the best model. `None`: chosen after the first epoch by
    /// [`super::auto_eval_every`] from the measured times.
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
    /// The saved model's scores: the best epoch's with `keep_best`, else the last epoch's.
    pub ap_after: Option<ApSummary>,
    /// The trained epochs scored so far and the weights of the best.
    pub best: BestModel,
    /// Wall seconds spent scoring the validation set (to check the cost of `every`).
    pub score_seconds: f64,
    /// Scorings done (with `score_seconds`, the mean cost of one).
    pub scorings: usize,
    /// The base model's masks on the first test images ([`super::overlay::MAX_IMAGES`]).
    masks_before: Vec<Array2<u32>>,
    /// The saved model's masks on the same images.
    masks_after: Vec<Array2<u32>>,
    /// The interval in use: the explicit one, or the automatic one once the first epoch is timed.
    pub every: Option<usize>,
    /// Where the history goes once the run has stored its model ([`RunRecorder::keep`]); until
    /// then it is written to `<model>.metrics.jsonl.partial`, removed when the run fails, so a
    /// failed run neither leaves a history without a model nor replaces an earlier model's.
    final_path: PathBuf,
    kept: bool,
}

/// `<model>.<suffix>` next to the model file.
pub(crate) fn beside(model_path: &Path, suffix: &str) -> PathBuf {
    let mut s = model_path.as_os_str().to_owned();
    s.push(format!(".{suffix}"));
    PathBuf::from(s)
}

impl RunRecorder {
    /// Creates `<model>.metrics.jsonl.partial` (see [`RunRecorder::keep`]) and, with `log_dir`,
    /// a TensorBoard event file in it.
    pub fn create(
        model_path: &Path,
        log_dir: Option<&Path>,
        validation: Option<Validation>,
    ) -> Result<Self, RecordError> {
        let final_path = Self::metrics_path(model_path);
        let path = beside(model_path, "metrics.jsonl.partial");
        if let Some(dir) = log_dir {
            std::fs::create_dir_all(dir)
                .map_err(|source| RecordError::Io { path: dir.to_path_buf(), source })?;
        }
        let log = MetricsLog::create(&path, log_dir).map_err(|source| RecordError::Io { path, source })?;
        Ok(RunRecorder {
            every: validation.as_ref().and_then(|v| v.every),
            log,
            validation,
            t0: Instant::now(),
            ap_before: None,
            ap_after: None,
            best: BestModel::new(),
            score_seconds: 0.0,
            scorings: 0,
            masks_before: Vec::new(),
            masks_after: Vec::new(),
            final_path,
            kept: false,
        })
    }

    /// The run stored its model: the history becomes `<model>.metrics.jsonl` (replacing an earlier
    /// run's). Without this call the history is removed when the recorder is dropped.
    pub(crate) fn keep(&mut self) -> Result<(), RecordError> {
        std::fs::rename(&self.log.path, &self.final_path)
            .map_err(|source| RecordError::Io { path: self.final_path.clone(), source })?;
        self.log.path = self.final_path.clone();
        self.kept = true;
        Ok(())
    }

    pub(crate) fn metrics_path(model_path: &Path) -> PathBuf {
        beside(model_path, "metrics.jsonl")
    }

    /// `<model>.qc.csv`: the saved model's QC metrics ([`super::qc_csv`]).
    pub(crate) fn qc_csv_path(model_path: &Path) -> PathBuf {
        beside(model_path, "qc.csv")
    }

    /// `<model>.overlay.png`: the first test images, base and saved model side by side.
    pub(crate) fn overlay_path(model_path: &Path) -> PathBuf {
        beside(model_path, "overlay.png")
    }

    pub(crate) fn report_path(model_path: &Path) -> PathBuf {
        beside(model_path, "report.png")
    }

    pub(crate) fn tensorboard_path(&self) -> Option<&Path> {
        self.log.tensorboard_path()
    }

    pub fn lines(&self) -> &[MetricsLine] {
        &self.log.lines
    }

    fn write(&mut self, line: MetricsLine) -> Result<(), RecordError> {
        let path = self.log.path.clone();
        self.log.write(line).map_err(|source| RecordError::Io { path, source })
    }

    fn score(&mut self, model: &Model) -> Result<Option<ApSummary>, RecordError> {
        Ok(self.score_keeping(model, 0)?.map(|(ap, _)| ap))
    }

    /// [`Self::score`] with the masks of the first `keep` test images.
    fn score_keeping(&mut self, model: &Model, keep: usize) -> Result<Option<ScoredMasks>, RecordError> {
        let t = Instant::now();
        let out = match &self.validation {
            Some(v) if !v.examples.is_empty() => {
                Some(evaluate::score_examples(model, v.diam_mean, &v.examples, v.device, keep)?)
            }
            _ => None,
        };
        if out.is_some() {
            self.score_seconds += t.elapsed().as_secs_f64();
            self.scorings += 1;
        }
        Ok(out)
    }

    /// Scores the base model (no-op without a test set) and writes the `before` line.
    pub fn before(&mut self, model: &Model) -> Result<Option<&ApSummary>, RecordError> {
        let scored = self.score_keeping(model, super::overlay::MAX_IMAGES)?;
        (self.ap_before, self.masks_before) = scored.map_or((None, Vec::new()), |(ap, m)| (Some(ap), m));
        if let Some(ap) = self.ap_before.clone() {
            self.write(MetricsLine::validation(Stage::Before, 0, self.t0.elapsed().as_secs_f64(), &ap))?;
        }
        Ok(self.ap_before.as_ref())
    }

    /// Writes the epoch's line, with AP, F1 and PQ when `every` says so, offering the scored
    /// model to [`RunRecorder::best`] (the last epoch is left to [`RunRecorder::after`]).
    pub fn epoch(&mut self, info: &EpochInfo, model: &Model) -> Result<(), RecordError> {
        let mut line = MetricsLine::train(info, self.t0.elapsed().as_secs_f64());
        let done = info.epoch + 1;
        if self.every.is_none() && self.scorings > 0 {
            let every = super::auto_eval_every(self.score_seconds / self.scorings as f64, info.seconds);
            tracing::info!(every, "scoring the test set every {every} epochs (under 10% of training time)");
            self.every = Some(every);
        }
        let due = self.every.is_some_and(|n| n > 0 && done.is_multiple_of(n));
        if due && done < info.n_epochs {
            if let Some(ap) = self.score(model)? {
                self.best.offer(done, &ap, model);
                line = line.with_scores(&ap);
            }
        }
        self.write(line)
    }

    /// Scores the trained model (no-op without a test set), offers it as the last candidate,
    /// and with `keep_best` loads the best epoch's weights into `model` (the caller saves it).
    /// Writes the `after` line with the kept model's scores and, with `keep_best`, `best_epoch`. Returns the kept model's scores.
    pub fn after(
        &mut self,
        model: &Model,
        n_epochs: usize,
        keep_best: bool,
    ) -> Result<Option<&ApSummary>, RecordError> {
        let Some((last, masks)) = self.score_keeping(model, super::overlay::MAX_IMAGES)? else {
            return Ok(None);
        };
        self.masks_after = masks;
        self.best.offer(n_epochs, &last, model);
        let mut kept = (last, None);
        if keep_best {
            if let Some(b) = self.best.best().cloned() {
                if b.epoch != n_epochs {
                    self.best.restore_into(model).map_err(EvaluateError::from)?;
                    // scored again, not copied: the after line describes the weights now in
                    // `model` (what is saved), so a faulty restore would show
                    if let Some((ap, masks)) = self.score_keeping(model, super::overlay::MAX_IMAGES)? {
                        kept.0 = ap;
                        self.masks_after = masks;
                    }
                }
                kept.1 = Some(b.epoch);
            }
        }
        let mut line =
            MetricsLine::validation(Stage::After, n_epochs, self.t0.elapsed().as_secs_f64(), &kept.0);
        line.best_epoch = kept.1;
        self.write(line)?;
        self.ap_after = Some(kept.0);
        Ok(self.ap_after.as_ref())
    }

    /// The overlay picture ([`super::overlay`]) of the first test images, the base model
    /// (`base`) and the saved one (`trained`) side by side; `None` until both were scored.
    pub(crate) fn overlay_png(&self, base: &str, trained: &str) -> Option<Result<Vec<u8>, PlotError>> {
        use super::overlay::{render_before_after, OverlayImage};
        let v = self.validation.as_ref()?;
        if self.masks_before.is_empty() || self.masks_after.len() != self.masks_before.len() {
            return None;
        }
        let images: Vec<OverlayImage> = v
            .examples
            .iter()
            .take(self.masks_before.len())
            .map(|e| OverlayImage { name: &e.name, image: &e.image, truth: &e.labels })
            .collect();
        Some(render_before_after(
            &images,
            (base, self.masks_before.iter().collect()),
            (trained, self.masks_after.iter().collect()),
        ))
    }

    /// Draws the report picture of the history so far into `path`.
    pub(crate) fn write_png(&self, path: &Path, title: &str) -> Result<(), RecordError> {
        let png = history_png(title, &self.log.lines)?;
        std::fs::write(path, png).map_err(|source| RecordError::Io { path: path.to_path_buf(), source })
    }
}

impl Drop for RunRecorder {
    fn drop(&mut self) {
        if !self.kept {
            // a failed run: its partial history goes with it (the error says what happened)
            let _ = std::fs::remove_file(&self.log.path);
        }
    }
}
