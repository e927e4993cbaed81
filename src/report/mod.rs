//! Training outputs: metrics history as JSON lines, TensorBoard scalars ([`tensorboard`]), and a
//! report picture ([`plot`]); [`RunRecorder`] keeps them during a CLI training run with a test
//! set, [`JobReport`] bundles them for the worker's report item.

mod best;
mod cellpose_log;
pub mod overlay;
pub mod plot;
mod qc_csv;
mod recorder;
pub mod tensorboard;

pub use best::{auto_eval_every, BestModel, ScoredEpoch, Snapshot, SCORING_SHARE};
pub use cellpose_log::CellposeEpochLog;
pub use qc_csv::qc_csv;
pub use recorder::{RecordError, RunRecorder, Validation};

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Serialize;

use crate::evaluate::ApSummary;

/// Which part of a run a metrics line describes.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The base model on the test set, before any training.
    Before,
    /// One training epoch.
    Train,
    /// The trained model (what was saved) on the test set.
    After,
}

/// One line of `<model>.metrics.jsonl`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct MetricsLine {
    pub stage: Stage,
    /// Epochs completed when the line was written: 0 before training, 1.. for training epochs,
    /// the number of epochs after training. Also the TensorBoard step.
    pub epoch: usize,
    pub train_loss: Option<f64>,
    /// cellpose's test loss (epoch 5 and every 10th, 0-based, as `train_seg` computes it).
    pub test_loss: Option<f64>,
    pub lr: Option<f64>,
    /// Seconds since the run started (for a job's report: since training started).
    pub seconds: f64,
    /// Wall seconds of this training epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_seconds: Option<f64>,
    /// Average precision by IoU threshold ("0.5", "0.75", "0.9") when computed for this line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ap: Option<BTreeMap<String, f64>>,
    /// F1 and panoptic quality by IoU threshold, from the counts summed over the validation
    /// images, when AP was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pq: Option<BTreeMap<String, f64>>,
    /// On the `after` line of a run that kept its best model: the epoch whose weights were kept
    /// (best validation AP@0.5; the last epoch's number when that was the best).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    /// On training lines: `"fp32"` or `"bf16-mixed"`, the precision the epoch's steps ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

impl MetricsLine {
    /// A training epoch's line from the trainer's summary (`info.epoch` is 0-based).
    pub fn train(info: &crate::train::EpochInfo, seconds: f64) -> MetricsLine {
        MetricsLine {
            stage: Stage::Train,
            epoch: info.epoch + 1,
            train_loss: Some(info.train_loss),
            test_loss: info.test_loss,
            lr: Some(info.lr),
            seconds,
            epoch_seconds: Some(info.seconds),
            ap: None,
            f1: None,
            pq: None,
            best_epoch: None,
            precision: Some(info.precision.to_string()),
        }
    }

    /// Sets AP, F1 and PQ from a validation summary.
    pub(crate) fn with_scores(mut self, ap: &ApSummary) -> MetricsLine {
        let keyed = |v: &[f64]| -> BTreeMap<String, f64> {
            ap.thresholds.iter().zip(v).map(|(t, a)| (format!("{t}"), *a)).collect()
        };
        self.ap = Some(ap.by_threshold());
        self.f1 = Some(keyed(&ap.f1));
        self.pq = Some(keyed(&ap.pq));
        self
    }

    /// A before/after line carrying validation AP.
    pub fn validation(stage: Stage, epoch: usize, seconds: f64, ap: &ApSummary) -> MetricsLine {
        MetricsLine {
            stage,
            epoch,
            train_loss: None,
            test_loss: None,
            lr: None,
            seconds,
            epoch_seconds: None,
            ap: None,
            f1: None,
            pq: None,
            best_epoch: None,
            precision: None,
        }
        .with_scores(ap)
    }
}

/// Writes `<model>.metrics.jsonl` and, when asked, TensorBoard events.
pub struct MetricsLog {
    jsonl: BufWriter<File>,
    pub path: PathBuf,
    tb: Option<tensorboard::EventWriter>,
    pub lines: Vec<MetricsLine>,
}

impl MetricsLog {
    pub fn create(path: &Path, tensorboard_dir: Option<&Path>) -> std::io::Result<MetricsLog> {
        let tb = tensorboard_dir.map(tensorboard::EventWriter::create).transpose()?;
        Ok(MetricsLog {
            jsonl: BufWriter::new(File::create(path)?),
            path: path.to_path_buf(),
            tb,
            lines: Vec::new(),
        })
    }

    pub(crate) fn tensorboard_path(&self) -> Option<&Path> {
        self.tb.as_ref().map(|t| t.path())
    }

    /// Appends `line` (flushed, so a crashed run keeps its history) and its TensorBoard scalars
    /// `loss/train`, `loss/test`, `lr`, `ap/iou_<threshold>` (and `f1/..`, `pq/..`) at step `line.epoch`.
    pub fn write(&mut self, line: MetricsLine) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.jsonl, &line)?;
        self.jsonl.write_all(b"\n")?;
        self.jsonl.flush()?;
        if let Some(tb) = &mut self.tb {
            let mut scalars: Vec<(String, f64)> = Vec::new();
            let named = [("loss/train", line.train_loss), ("loss/test", line.test_loss), ("lr", line.lr)];
            scalars.extend(named.iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))));
            for (name, m) in [("ap", &line.ap), ("f1", &line.f1), ("pq", &line.pq)] {
                for (k, v) in m.iter().flatten().filter(|(_, v)| v.is_finite()) {
                    scalars.push((format!("{name}/iou_{k}"), *v));
                }
            }
            if !scalars.is_empty() {
                let refs: Vec<(&str, f64)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                tb.scalars(line.epoch as i64, &refs)?;
            }
        }
        self.lines.push(line);
        Ok(())
    }
}

/// The metrics history of a run that only kept its losses and epoch times (the worker's job):
/// before, one line per epoch, after. `seconds` is the sum of the epoch times so far;
/// `epoch_seconds` is left out where unknown (0: an epoch run before times were kept).
pub(crate) fn history_lines(
    train_losses: &[f64],
    lr: &[f64],
    epoch_seconds: &[f64],
    before: Option<&ApSummary>,
    after: Option<&ApSummary>,
    precision: &str,
) -> Vec<MetricsLine> {
    let mut lines: Vec<MetricsLine> =
        before.map(|b| MetricsLine::validation(Stage::Before, 0, 0.0, b)).into_iter().collect();
    let mut total = 0.0;
    for (e, &l) in train_losses.iter().enumerate() {
        let took = epoch_seconds.get(e).copied().unwrap_or(0.0);
        total += took;
        lines.push(MetricsLine {
            stage: Stage::Train,
            epoch: e + 1,
            train_loss: Some(l),
            test_loss: None,
            lr: lr.get(e).copied(),
            seconds: total,
            epoch_seconds: (took > 0.0).then_some(took),
            ap: None,
            f1: None,
            pq: None,
            best_epoch: None,
            precision: Some(precision.to_string()),
        });
    }
    lines.extend(after.map(|a| MetricsLine::validation(Stage::After, train_losses.len(), total, a)));
    lines
}

/// The report picture for a metrics history: train and test loss and lr by epoch, AP of the
/// `before` and `after` lines by threshold.
pub(crate) fn history_png(title: &str, lines: &[MetricsLine]) -> Result<Vec<u8>, plot::PlotError> {
    let train: Vec<(usize, f64)> = lines.iter().filter_map(|l| l.train_loss.map(|v| (l.epoch, v))).collect();
    let test: Vec<(usize, f64)> = lines.iter().filter_map(|l| l.test_loss.map(|v| (l.epoch, v))).collect();
    let lrs: Vec<(usize, f64)> = lines.iter().filter_map(|l| l.lr.map(|v| (l.epoch, v))).collect();
    let ap_of = |stage: Stage| lines.iter().rev().find(|l| l.stage == stage).and_then(|l| l.ap.clone());
    let (before, after) = (ap_of(Stage::Before), ap_of(Stage::After));
    let mut keys: Vec<(f64, String)> = before
        .iter()
        .chain(after.iter())
        .flat_map(|m| m.keys())
        .filter_map(|k| k.parse::<f64>().ok().map(|t| (t, k.clone())))
        .collect();
    keys.sort_by(|a, b| a.0.total_cmp(&b.0));
    keys.dedup_by(|a, b| a.1 == b.1);
    let rows: Vec<(f64, Option<f64>, Option<f64>)> = keys
        .iter()
        .map(|(t, k)| {
            (
                *t,
                before.as_ref().and_then(|m| m.get(k).copied()),
                after.as_ref().and_then(|m| m.get(k).copied()),
            )
        })
        .collect();
    let note = lines.iter().rev().find(|l| l.stage == Stage::After).and_then(qc_note);
    plot::render_png(&plot::PlotData {
        title,
        train_loss: &train,
        test_loss: &test,
        lr: &lrs,
        ap: &rows,
        qc_note: note.as_deref(),
    })
}

/// "trained: F1@0.5 0.91, PQ@0.5 0.78 (epoch 40)" for the report picture.
fn qc_note(after: &MetricsLine) -> Option<String> {
    let at = |m: &Option<BTreeMap<String, f64>>| m.as_ref().and_then(|m| m.get("0.5").copied());
    let (f1, pq) = (at(&after.f1)?, at(&after.pq)?);
    let epoch = after.best_epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default();
    Some(format!("trained: F1@0.5 {f1:.2}, PQ@0.5 {pq:.2}{epoch}"))
}

/// What the worker stores next to a trained model.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub model_name: String,
    pub base_model: String,
    pub epochs: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub n_train: usize,
    pub n_validation: usize,
    pub train_losses: Vec<f64>,
    /// The learning rate each epoch trained with ([`crate::train::TrainOutcome::learning_rates`]):
    /// the family's own schedule, never recomputed here.
    pub learning_rates: Vec<f64>,
    /// Wall seconds of each epoch.
    pub epoch_seconds: Vec<f64>,
    pub ap_before: Option<ApSummary>,
    pub ap_after: Option<ApSummary>,
    pub seconds: f64,
    pub device: String,
    /// `"fp32"` or `"bf16-mixed"`: the precision training ran in.
    pub precision: String,
    /// The epoch whose weights were uploaded ("Keep best model" with a validation region).
    pub kept_epoch: Option<usize>,
    /// Validation AP@0.5 of every epoch scored during training.
    pub scored_epochs: Vec<ScoredEpoch>,
}

impl JobReport {
    /// The validated model's QC metrics as CSV ([`qc_csv`]), when there was a validation set:
    /// for the job to upload beside `report.json`.
    pub fn qc_csv(&self) -> Option<String> {
        self.ap_after.as_ref().map(qc_csv)
    }

    /// `report.json`, `metrics.jsonl`, `report.png` and, with a validation set, `qc.csv`
    /// (precision, recall, F1, PQ per image), ready to upload.
    pub fn files(&self) -> Result<Vec<(String, Bytes, &'static str)>, plot::PlotError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| plot::PlotError(e.to_string()))?;
        let mut lines = history_lines(
            &self.train_losses,
            &self.learning_rates,
            &self.epoch_seconds,
            self.ap_before.as_ref(),
            self.ap_after.as_ref(),
            &self.precision,
        );
        for line in lines.iter_mut().filter(|l| l.stage == Stage::After) {
            line.best_epoch = self.kept_epoch;
        }
        let mut jsonl = Vec::new();
        for line in &lines {
            serde_json::to_writer(&mut jsonl, line).map_err(|e| plot::PlotError(e.to_string()))?;
            jsonl.push(b'\n');
        }
        let title = format!(
            "{} (from {}, {} epochs, {} training images, {})",
            self.model_name, self.base_model, self.epochs, self.n_train, self.precision
        );
        let png = history_png(&title, &lines)?;
        let mut files = vec![
            ("report.json".into(), Bytes::from(json), "application/json"),
            ("metrics.jsonl".into(), Bytes::from(jsonl), "application/x-ndjson"),
            ("report.png".into(), Bytes::from(png), "image/png"),
        ];
        if let Some(csv) = self.qc_csv() {
            files.push(("qc.csv".into(), Bytes::from(csv), "text/csv"));
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{ApSummary, ImageScore};

    fn summary(ap: f64) -> ApSummary {
        ApSummary::from_images(vec![ImageScore {
            name: "a".into(),
            n_true: 2,
            n_pred: 2,
            ap: vec![ap, ap / 2.0, 0.0],
            tp: vec![2, 1, 0],
            fp: vec![0, 1, 2],
            fn_: vec![0, 1, 2],
            iou_sum: vec![1.8, 0.8, 0.0],
        }])
    }

    #[test]
    fn history_has_before_epochs_after_with_ap_only_where_computed() {
        let (b, a) = (summary(0.25), summary(0.75));
        let lines = history_lines(&[1.5, 1.0], &[0.1, 0.2], &[2.0, 3.0], Some(&b), Some(&a), "bf16-mixed");
        let json: Vec<String> = lines.iter().map(|l| serde_json::to_string(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert!(json[0].starts_with(r#"{"stage":"before","epoch":0,"train_loss":null"#), "{}", json[0]);
        assert!(json[0].contains(r#""ap":{"0.5":0.25,"0.75":0.125,"0.9":0.0}"#), "{}", json[0]);
        assert!(json[2].contains(r#""stage":"train","epoch":2,"train_loss":1.0"#) && !json[2].contains("ap"));
        assert!(json[3].starts_with(r#"{"stage":"after","epoch":2"#) && json[3].contains(r#""0.5":0.75"#));
        // training lines name the precision they ran in; the scoring lines have none
        assert!(
            json[1].contains(r#""precision":"bf16-mixed""#) && !json[3].contains("precision"),
            "{json:?}"
        );
        // each epoch line carries its own wall seconds and the running total
        assert_eq!((lines[1].seconds, lines[1].epoch_seconds), (2.0, Some(2.0)));
        assert_eq!((lines[2].seconds, lines[2].epoch_seconds), (5.0, Some(3.0)));
        assert_eq!((lines[3].seconds, lines[3].epoch_seconds), (5.0, None));
    }

    #[test]
    fn history_picture_is_a_png_of_the_report_size() {
        let lines = history_lines(
            &[1.5, 1.0, 0.8],
            &[0.1, 0.2, 0.2],
            &[],
            Some(&summary(0.25)),
            Some(&summary(0.75)),
            "fp32",
        );
        let png = history_png("t", &lines).unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!((img.width(), img.height()), (1500, 450));
    }
}
