//! The package's documentation: README.md with the network and how to get masks (each family's
//! text, see `Network::readme_network`), the training
//! parameters and validation scores when the training run's `<model>.metrics.jsonl` lies beside
//! the model, and the same facts as `config.cellpose` for programs.

use std::path::Path;

use super::rdf::Cite;
use crate::model::ModelFamily;
use crate::report::{MetricsLine, RunRecorder, Stage};

/// What a training run's metrics history tells about the model.
#[derive(Debug, Clone)]
pub struct TrainingRecord {
    pub epochs: usize,
    /// Learning rate of the schedule's plateau (the largest per-epoch value).
    pub learning_rate: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub before: Option<MetricsLine>,
    pub after: Option<MetricsLine>,
}

impl TrainingRecord {
    /// Reads `<model>.metrics.jsonl` (written by `train`); None when absent or unreadable
    /// (the package is still valid, only less documented).
    pub(crate) fn beside(model: &Path) -> Option<TrainingRecord> {
        let text = std::fs::read_to_string(RunRecorder::metrics_path(model)).ok()?;
        let lines: Vec<MetricsLine> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let train: Vec<&MetricsLine> = lines.iter().filter(|l| l.stage == Stage::Train).collect();
        if train.is_empty() {
            return None;
        }
        let find = |s: Stage| lines.iter().rev().find(|l| l.stage == s).cloned();
        Some(TrainingRecord {
            epochs: train.iter().map(|l| l.epoch).max().unwrap_or(0),
            learning_rate: train.iter().filter_map(|l| l.lr).reduce(f64::max),
            final_train_loss: train.last().and_then(|l| l.train_loss),
            before: find(Stage::Before),
            after: find(Stage::After),
        })
    }
}

/// A name BioImage.IO accepts: letters, digits, spaces and `_-()`; other characters become spaces.
pub(crate) fn clean_name(s: &str) -> String {
    let cleaned: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || " _-()".contains(c) { c } else { ' ' }).collect();
    let t = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.is_empty() {
        "model".into()
    } else {
        t.chars().take(100).collect()
    }
}

/// The cellpose papers (Stringer et al. 2021; Pachitariu & Stringer 2022), and for Cellpose-SAM
/// its own (Pachitariu, Rariden & Stringer 2025, as cellpose 4's README asks).
pub(crate) fn citations(family: ModelFamily) -> Vec<Cite> {
    let mut cites = vec![
        Cite {
            text: "Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. Nature Methods 18, 100-106 (2021).".into(),
            doi: "10.1038/s41592-020-01018-x".into(),
        },
        Cite {
            text: "Pachitariu, M. & Stringer, C. Cellpose 2.0: how to train your own model. Nature Methods 19, 1634-1641 (2022).".into(),
            doi: "10.1038/s41592-022-01663-4".into(),
        },
    ];
    if family == ModelFamily::Cpsam {
        cites.push(Cite {
            text: "Pachitariu, M., Rariden, M. & Stringer, C. Cellpose-SAM: superhuman generalization for cellular segmentation. bioRxiv (2025).".into(),
            doi: "10.1101/2025.04.28.651001".into(),
        });
    }
    cites
}

pub struct DocInput<'a> {
    pub name: &'a str,
    pub file: &'a str,
    pub cellpose_version: &'a str,
    /// The `## Network` and `## Masks` sections (the family's).
    pub network: &'a str,
    pub parent: Option<&'a str>,
    pub record: Option<&'a TrainingRecord>,
}

fn scores_table(line: &MetricsLine) -> String {
    let mut out = String::from("| IoU | AP | F1 | PQ |\n|---|---|---|---|\n");
    let get = |m: &Option<std::collections::BTreeMap<String, f64>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
    };
    for k in ["0.5", "0.75", "0.9"] {
        out.push_str(&format!(
            "| {k} | {} | {} | {} |\n",
            get(&line.ap, k),
            get(&line.f1, k),
            get(&line.pq, k)
        ));
    }
    out
}

/// README.md of the package.
pub fn readme(d: &DocInput) -> String {
    let mut out = format!(
        "# {}\n\nA Cellpose {} model (`{}`), packaged by cellpose-train-worker.\n\n{}",
        d.name, d.cellpose_version, d.file, d.network
    );
    out.push_str("\n## Training\n\n");
    if let Some(p) = d.parent {
        out.push_str(&format!("Fine-tuned from `{p}`.\n\n"));
    }
    match d.record {
        Some(r) => {
            out.push_str(&format!("- epochs: {}\n", r.epochs));
            if let Some(lr) = r.learning_rate {
                out.push_str(&format!("- learning rate: {lr} (cellpose train_seg schedule)\n"));
            }
            if let Some(l) = r.final_train_loss {
                out.push_str(&format!("- final training loss: {l:.4}\n"));
            }
            if let Some(b) = r.after.as_ref().and_then(|a| a.best_epoch) {
                out.push_str(&format!("- kept model: epoch {b} (best validation AP@0.5)\n"));
            }
        }
        None => out.push_str("No training record was found beside the model file.\n"),
    }
    // BioImage.IO looks for a Validation section
    out.push_str("\n## Validation\n\n");
    let scored: Vec<(&str, &MetricsLine)> = d
        .record
        .into_iter()
        .flat_map(|r| [("before training (base model)", &r.before), ("of this model", &r.after)])
        .filter_map(|(t, l)| l.as_ref().map(|l| (t, l)))
        .collect();
    if scored.is_empty() {
        out.push_str("No validation scores were recorded (train with a test set to have them).\n");
    }
    for (title, line) in scored {
        out.push_str(&format!(
            "Scores {title} on the test set (cellpose matching; PQ = panoptic quality):\n\n{}\n",
            scores_table(line)
        ));
    }
    out.push_str(
        "The package's own check (`bioimageio test`) recomputes `test_output.npy` from \
         `test_input.npy` with cellpose's own network class (the architecture file subclasses it).\n",
    );
    out
}

/// `config.cellpose`: diameters, parent, training summary and validation scores.
pub(crate) fn config_json(
    cellpose_version: &str,
    diam: (f64, f64),
    parent: Option<&str>,
    record: Option<&TrainingRecord>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "cellpose_version": cellpose_version,
        "diam_mean": diam.0,
        "diam_labels": diam.1,
    });
    if let Some(p) = parent {
        v["parent_model"] = p.into();
    }
    if let Some(r) = record {
        v["training"] = serde_json::json!({
            "epochs": r.epochs,
            "learning_rate": r.learning_rate,
            "final_train_loss": r.final_train_loss,
            "best_epoch": r.after.as_ref().and_then(|a| a.best_epoch),
        });
        if let Some(a) = &r.after {
            v["validation"] = serde_json::json!({ "ap": a.ap, "f1": a.f1, "pq": a.pq });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_names_the_kept_epoch_and_the_validation_scores() {
        let after: MetricsLine = serde_json::from_str(
            r#"{"stage":"after","epoch":6,"train_loss":null,"test_loss":null,"lr":null,"seconds":1.0,
               "ap":{"0.5":0.75,"0.75":0.5,"0.9":0.25},"f1":{"0.5":0.8},"pq":{"0.5":0.7},"best_epoch":4}"#,
        )
        .expect("metrics line");
        let record = TrainingRecord {
            epochs: 6,
            learning_rate: Some(0.1),
            final_train_loss: Some(0.5),
            before: None,
            after: Some(after),
        };
        let text = readme(&DocInput {
            name: "Cellpose m",
            file: "m",
            cellpose_version: "3.1.1.2",
            network: "## Network\n\nCPnet.\n",
            parent: Some("cyto3"),
            record: Some(&record),
        });
        assert!(
            text.contains("Fine-tuned from `cyto3`") && text.contains("epoch 4 (best validation AP@0.5)")
        );
        assert!(text.contains("## Validation") && text.contains("| 0.5 | 0.750 | 0.800 | 0.700 |"), "{text}");
        assert!(text.contains("A Cellpose 3.1.1.2 model (`m`)") && text.contains("## Network\n\nCPnet."));
        assert_eq!(clean_name("a/b:c.pt"), "a b c pt");
        assert_eq!(citations(ModelFamily::Cpnet).len(), 2);
        assert!(citations(ModelFamily::Cpsam).iter().any(|c| c.doi == "10.1101/2025.04.28.651001"));
    }
}
