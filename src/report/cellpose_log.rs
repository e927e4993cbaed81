//! cellpose 3.1.1.2 `train_seg`'s per-epoch log line, so tools that parse cellpose's output
//! (BIOP's QuPath extension draws its loss graph from it) read ours unchanged.
//!
//! cellpose logs at epoch 5 and every 10th epoch (0-based `iepoch`), writing
//! `{iepoch}, train_loss={lavg:.4f}, test_loss={lavgt:.4f}, LR={LR[iepoch]:.6f}, time {t:.2f}s`
//! where `lavg` is the mean training loss over every image seen *since the previous log line*
//! (not just this epoch), `lavgt` the test loss (0 without a test set) and `t` the seconds since
//! training started.

use crate::train::EpochInfo;

/// Accumulates the training loss between log lines as cellpose's `lavg` / `nsum` do.
#[derive(Debug, Default, Clone)]
pub struct CellposeEpochLog {
    /// Sum of the per-epoch mean losses since the last line; every epoch sees the same number of
    /// images (`nimg_per_epoch`), so their mean equals cellpose's image-weighted `lavg / nsum`.
    loss_sum: f64,
    epochs: usize,
}

impl CellposeEpochLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// cellpose's cadence: `iepoch == 5 or iepoch % 10 == 0`, the test loss's too.
    pub(crate) fn logs_at(epoch: usize) -> bool {
        crate::train::epochs::cellpose_reports_at(epoch)
    }

    /// Takes one finished epoch; returns cellpose's line when cellpose would log at this epoch.
    pub(crate) fn observe(&mut self, e: &EpochInfo) -> Option<String> {
        self.loss_sum += e.train_loss;
        self.epochs += 1;
        if !Self::logs_at(e.epoch) {
            return None;
        }
        let lavg = self.loss_sum / self.epochs as f64;
        self.loss_sum = 0.0;
        self.epochs = 0;
        Some(format!(
            "{}, train_loss={:.4}, test_loss={:.4}, LR={:.6}, time {:.2}s",
            e.epoch,
            lavg,
            e.test_loss.unwrap_or(0.0),
            e.lr,
            e.elapsed_s
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(epoch: usize, train_loss: f64, test_loss: Option<f64>) -> EpochInfo {
        EpochInfo {
            epoch,
            n_epochs: 20,
            train_loss,
            test_loss,
            lr: 0.005 * epoch as f64 / 10.0,
            elapsed_s: 1.5 * (epoch + 1) as f64,
            eta_s: 0.0,
            seconds_per_step: 0.1,
            seconds: 1.5,
            precision: "fp32",
        }
    }

    #[test]
    fn lines_come_at_cellpose_epochs_with_the_loss_averaged_since_the_last_line() {
        let mut log = CellposeEpochLog::new();
        let lines: Vec<(usize, String)> = (0..12)
            .filter_map(|e| log.observe(&info(e, e as f64, (e == 10).then_some(0.25))).map(|l| (e, l)))
            .collect();
        let epochs: Vec<usize> = lines.iter().map(|l| l.0).collect();
        assert_eq!(epochs, vec![0, 5, 10]);
        assert_eq!(lines[0].1, "0, train_loss=0.0000, test_loss=0.0000, LR=0.000000, time 1.50s");
        // epochs 1..=5 averaged: 3.0
        assert_eq!(lines[1].1, "5, train_loss=3.0000, test_loss=0.0000, LR=0.002500, time 9.00s");
        // epochs 6..=10 averaged: 8.0
        assert_eq!(lines[2].1, "10, train_loss=8.0000, test_loss=0.2500, LR=0.005000, time 16.50s");
    }
}
