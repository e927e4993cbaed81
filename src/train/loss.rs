//! Training losses, exactly as cellpose 3.1.1.2 `train._loss_fn_seg` and cellpose's class loss
//! (`_loss_fn_class`, used by models whose output has class maps in front of the flows).

use tch::{Reduction, TchError, Tensor};

/// `MSE(y_flows, 5 * flows) / 2 + BCEWithLogits(y_cellprob, cellprob > 0.5)`.
///
/// `y` is `[B, nout, H, W]` with dY, dX, cellprob as its last three maps (for nout = 3 these are
/// maps 0, 1, 2 as in `_loss_fn_seg`; class models put class logits first). `lbl` is
/// `[B, 3, H, W]`: cellprob target, dY, dX (unit flows, scaled by 5 here as cellpose does).
/// Fails (never panics) when libtorch cannot allocate: the targets are as large as the batch.
pub fn seg_loss(y: &Tensor, lbl: &Tensor) -> Result<Tensor, TchError> {
    let nout = y.size()[1];
    let flows_pred = y.f_narrow(1, nout - 3, 2)?;
    let flows_true = lbl.f_narrow(1, 1, 2)?.f_mul_scalar(5.0)?;
    let mse = flows_pred.f_mse_loss(&flows_true, Reduction::Mean)?.f_div_scalar(2.0)?;
    let prob_pred = y.f_select(1, nout - 1)?;
    let prob_true = lbl.f_select(1, 0)?.f_gt(0.5)?.f_to_kind(prob_pred.kind())?;
    let bce =
        prob_pred.f_binary_cross_entropy_with_logits::<Tensor>(&prob_true, None, None, Reduction::Mean)?;
    mse.f_add(&bce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_flows_leave_only_the_bce_term() {
        let lbl = Tensor::from_slice(&[1.0f32, 0.6, -0.8]).view([1, 3, 1, 1]);
        let y = Tensor::from_slice(&[3.0f32, -4.0, 0.0]).view([1, 3, 1, 1]);
        let l = seg_loss(&y, &lbl).unwrap().double_value(&[]);
        // BCE(logit 0, target 1) = ln 2
        assert!((l - std::f64::consts::LN_2).abs() < 1e-6, "{l}");
    }
}
