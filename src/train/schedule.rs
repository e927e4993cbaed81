//! The learning-rate schedule of cellpose 3.1.1.2 `train_seg`, as a pure function.
//!
//! Linear warm-up over the first 10 epochs (`np.linspace(0, lr, 10)`, so epoch 0 has LR 0), then
//! constant. For `n_epochs > 300` the last 100 epochs are replaced by ten steps of 10 epochs, each
//! half the one before; for `n_epochs > 100` the last 50 by ten steps of 5 epochs. For fewer than
//! 10 epochs cellpose's array is still 10 long and training only reads the first `n_epochs`.

/// Learning rate for every epoch, `lr[epoch]` for `epoch in 0..n_epochs`.
pub fn lr_schedule(learning_rate: f64, n_epochs: usize) -> Vec<f64> {
    lr_schedule_with_tail_above(learning_rate, n_epochs, 100)
}

/// The schedule with the short halving tail starting for `n_epochs > short_tail_above`: the one
/// place cellpose 3.1.1.2 (100) and 4.2.1.1 (99) differ.
pub(crate) fn lr_schedule_with_tail_above(
    learning_rate: f64,
    n_epochs: usize,
    short_tail_above: usize,
) -> Vec<f64> {
    // np.linspace(0, lr, 10): i * (lr / 9), with the last value exactly lr
    let step = learning_rate / 9.0;
    let mut lr: Vec<f64> = (0..10).map(|i| if i == 9 { learning_rate } else { i as f64 * step }).collect();
    lr.extend(std::iter::repeat_n(learning_rate, n_epochs.saturating_sub(10)));
    let (cut, block) = if n_epochs > 300 {
        (100, 10)
    } else if n_epochs > short_tail_above {
        (50, 5)
    } else {
        (0, 0)
    };
    if cut > 0 {
        lr.truncate(lr.len() - cut);
        for _ in 0..10 {
            let v = lr[lr.len() - 1] / 2.0;
            lr.extend(std::iter::repeat_n(v, block));
        }
    }
    lr.truncate(n_epochs);
    lr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_constant_for_short_runs() {
        let lr = lr_schedule(0.1, 20);
        assert_eq!(lr.len(), 20);
        assert_eq!(lr[0], 0.0);
        assert!((lr[1] - 0.1 / 9.0).abs() < 1e-15);
        assert_eq!(lr[9], 0.1);
        assert!(lr[10..].iter().all(|&v| v == 0.1));
    }

    #[test]
    fn halving_tail_for_long_runs() {
        let lr = lr_schedule(0.2, 400);
        assert_eq!(lr.len(), 400);
        assert_eq!(lr[299], 0.2);
        assert_eq!(lr[300], 0.1);
        assert_eq!(lr[309], 0.1);
        assert_eq!(lr[310], 0.05);
        assert_eq!(lr[399], 0.2 / 1024.0);
        let mid = lr_schedule(0.2, 200);
        assert_eq!(mid.len(), 200);
        assert_eq!(mid[149], 0.2);
        assert_eq!(mid[150], 0.1);
        assert_eq!(mid[155], 0.05);
    }
}
