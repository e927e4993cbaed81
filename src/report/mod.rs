//! Training outputs: metrics history as JSON lines, TensorBoard scalars ([`tensorboard`]), and a
//! report picture ([`plot`]); [`JobReport`] bundles them for the worker's report item.

pub mod plot;
pub mod tensorboard;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Serialize;

use crate::evaluate::ApSummary;
use crate::train::schedule::lr_schedule;

/// One logged epoch.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct MetricsLine {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_loss: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
    /// Average precision by IoU threshold ("0.5", "0.75", "0.9") when computed this epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ap: Option<std::collections::BTreeMap<String, f64>>,
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
        Ok(MetricsLog { jsonl: BufWriter::new(File::create(path)?), path: path.to_path_buf(), tb, lines: Vec::new() })
    }

    pub fn tensorboard_path(&self) -> Option<&Path> {
        self.tb.as_ref().map(|t| t.path())
    }

    pub fn write(&mut self, line: MetricsLine) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.jsonl, &line)?;
        self.jsonl.write_all(b"\n")?;
        self.jsonl.flush()?;
        if let Some(tb) = &mut self.tb {
            let mut scalars: Vec<(String, f64)> = vec![("loss/train".into(), line.train_loss), ("lr".into(), line.lr)];
            if let Some(t) = line.test_loss {
                scalars.push(("loss/test".into(), t));
            }
            for (k, v) in line.ap.iter().flatten() {
                scalars.push((format!("ap/iou_{k}"), *v));
            }
            let refs: Vec<(&str, f64)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            tb.scalars(line.epoch as i64, &refs)?;
        }
        self.lines.push(line);
        Ok(())
    }
}

/// AP rows for the picture: (threshold, before, after).
pub fn ap_rows(before: Option<&ApSummary>, after: Option<&ApSummary>) -> Vec<(f64, Option<f64>, Option<f64>)> {
    let th = before.or(after).map(|a| a.thresholds.clone()).unwrap_or_default();
    th.iter()
        .enumerate()
        .map(|(i, &t)| (t, before.and_then(|b| b.ap.get(i).copied()), after.and_then(|a| a.ap.get(i).copied())))
        .collect()
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
    pub ap_before: Option<ApSummary>,
    pub ap_after: Option<ApSummary>,
    pub seconds: f64,
    pub device: String,
}

impl JobReport {
    /// `report.json`, `metrics.jsonl` and `report.png`, ready to upload.
    pub fn files(&self) -> Result<Vec<(String, Bytes, &'static str)>, plot::PlotError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| plot::PlotError(e.to_string()))?;
        let lr = lr_schedule(self.learning_rate, self.epochs);
        let mut jsonl = Vec::new();
        for (e, &l) in self.train_losses.iter().enumerate() {
            let line = MetricsLine { epoch: e, train_loss: l, test_loss: None, lr: lr[e], seconds: 0.0, ap: None };
            let _ = serde_json::to_writer(&mut jsonl, &line);
            jsonl.push(b'\n');
        }
        let train: Vec<(usize, f64)> = self.train_losses.iter().copied().enumerate().collect();
        let lrs: Vec<(usize, f64)> = lr.iter().copied().enumerate().collect();
        let png = plot::render_png(&plot::PlotData {
            title: &format!("{} (from {}, {} epochs, {} training images)", self.model_name, self.base_model, self.epochs, self.n_train),
            train_loss: &train,
            test_loss: &[],
            lr: &lrs,
            ap: &ap_rows(self.ap_before.as_ref(), self.ap_after.as_ref()),
        })?;
        Ok(vec![
            ("report.json".into(), Bytes::from(json), "application/json"),
            ("metrics.jsonl".into(), Bytes::from(jsonl), "application/x-ndjson"),
            ("report.png".into(), Bytes::from(png), "image/png"),
        ])
    }
}
