//! The learning-rate schedule of cellpose 4.2.1.1 `train_seg`, as a pure function.
//!
//! Same shape as cellpose 3.1.1.2's ([`crate::train::schedule::lr_schedule`]): a linear warm-up
//! `np.linspace(0, lr, 10)`, then constant, and for long runs a halving tail. cellpose 4 starts
//! the short tail (last 50 epochs as ten 5-epoch steps) at `n_epochs > 99` instead of `> 100`, so
//! its default 100-epoch run already decays: epochs 50..100 run at lr/2, lr/4, ... lr/1024.

/// Learning rate for every epoch, `lr[epoch]` for `epoch in 0..n_epochs`.
pub fn lr_schedule_cp4(learning_rate: f64, n_epochs: usize) -> Vec<f64> {
    crate::train::schedule::lr_schedule_with_tail_above(learning_rate, n_epochs, 99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_100_epochs_decay_from_epoch_50() {
        let lr = lr_schedule_cp4(1e-5, 100);
        assert_eq!(lr.len(), 100);
        assert_eq!(lr[0], 0.0);
        assert_eq!(lr[49], 1e-5);
        assert_eq!(lr[50], 0.5e-5);
        assert_eq!(lr[55], 0.25e-5);
        assert_eq!(lr[99], 1e-5 / 1024.0);
    }

    #[test]
    fn short_runs_have_no_tail() {
        let lr = lr_schedule_cp4(0.1, 99);
        assert!(lr[10..].iter().all(|&v| v == 0.1));
        assert_eq!(lr_schedule_cp4(0.1, 3).len(), 3);
    }
}
