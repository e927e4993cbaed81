//! The best-validation model: score the validation set every `eval_every` epochs and keep the
//! weights with the highest AP@0.5 (ties go to the later epoch: more training at the same score),
//! as InstanSeg keeps its best-F1 checkpoint and cellpose users ask for (MouseLand/cellpose #1113,
//! #1351). [`BestModel`] holds the weights in memory ([`Snapshot`]: a CPnet's state_dict, a few
//! MB; a Cellpose-SAM's trained tensors, 1.2 GB at full size) so keeping one costs no disk
//! writes; the CLI saves it at the end, the job uploads it.

use tch::{Device, Tensor};

use crate::evaluate::ApSummary;
use crate::model::torch_file::StateDict;
use crate::model::{CpsamModel, Model, ModelError};

/// A network whose weights can be copied out and put back: what [`BestModel`] keeps of either
/// family.
pub trait Snapshot {
    /// A copy of the weights, independent of the network's (training goes on changing those).
    type Weights: Send;
    fn weights(&self) -> Self::Weights;
    /// Puts `weights` back; `origin` names them in errors.
    fn restore(&self, weights: &Self::Weights, origin: &str) -> Result<(), ModelError>;
}

impl Snapshot for Model {
    type Weights = StateDict;

    fn weights(&self) -> StateDict {
        self.state_dict()
    }

    fn restore(&self, weights: &StateDict, origin: &str) -> Result<(), ModelError> {
        self.copy_from(weights, origin)
    }
}

impl Snapshot for CpsamModel {
    /// The tensors training changes ([`crate::train::cpsam::trained_parameters`]), copied to
    /// the CPU: the rest stays as the base model had it.
    type Weights = Vec<(String, Tensor)>;

    fn weights(&self) -> Vec<(String, Tensor)> {
        tch::no_grad(|| {
            crate::train::cpsam::trained_parameters(self)
                .into_iter()
                .map(|(name, t)| (name, t.detach().to_device(Device::Cpu).copy()))
                .collect()
        })
    }

    fn restore(&self, weights: &Vec<(String, Tensor)>, origin: &str) -> Result<(), ModelError> {
        let vars = self.vs.variables();
        tch::no_grad(|| {
            for (name, w) in weights {
                let mut v = vars
                    .get(name)
                    .ok_or_else(|| ModelError::MissingTensor {
                        origin: origin.to_string(),
                        name: name.clone(),
                    })?
                    .shallow_clone();
                v.copy_(w);
            }
            Ok(())
        })
    }
}

/// Share of the training time scoring may take when the interval is chosen automatically:
/// 8%, leaving room under the 10% budget for epoch-to-epoch jitter.
pub const SCORING_SHARE: f64 = 0.08;

/// The automatic scoring interval: the fewest epochs between scorings that keep scoring under
/// [`SCORING_SHARE`] of the training time, from one measured scoring (`score_seconds`, the base
/// model before training) and one measured epoch. A fixed default cannot promise a budget:
/// scoring segments every validation image at full size (network plus mask dynamics), so its
/// cost against an epoch of training patches depends on the two sets' sizes (measured on
/// synthetic 96x96 data: one scoring of 2 images 1.66 s, one epoch of 4 images 1.60 s, so
/// every 13th epoch).
pub fn auto_eval_every(score_seconds: f64, epoch_seconds: f64) -> usize {
    if !(score_seconds.is_finite() && epoch_seconds.is_finite() && epoch_seconds > 0.0) {
        return 10;
    }
    let every = (score_seconds / (SCORING_SHARE * epoch_seconds)).ceil();
    every.clamp(1.0, 1e6) as usize
}

/// One scored epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoredEpoch {
    /// Epochs completed when scored (0 = the base model, before training).
    pub epoch: usize,
    /// AP at IoU 0.5, the selection criterion.
    pub ap50: f64,
}

/// Keeps the best-scoring weights of a network `M` seen so far.
pub struct BestModel<M: Snapshot = Model> {
    /// The best epoch, its full scores and a copy of its weights.
    best: Option<(ScoredEpoch, ApSummary, M::Weights)>,
    /// Every score offered, in order (the report's AP per scored epoch).
    pub history: Vec<ScoredEpoch>,
}

impl<M: Snapshot> Default for BestModel<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Snapshot> BestModel<M> {
    pub fn new() -> Self {
        BestModel { best: None, history: Vec::new() }
    }

    /// Offers `model` scored `summary` after `epoch` completed epochs; copies its weights when
    /// its AP@0.5 is at least the best so far (NaN scores, an empty validation set, never win).
    /// Returns whether it became the best.
    pub(crate) fn offer(&mut self, epoch: usize, summary: &ApSummary, model: &M) -> bool {
        let scored = ScoredEpoch { epoch, ap50: summary.ap50() };
        self.history.push(scored.clone());
        // `>=`: epochs are offered in order, so a tie goes to the later one
        let better =
            scored.ap50.is_finite() && self.best.as_ref().is_none_or(|(b, ..)| scored.ap50 >= b.ap50);
        if better {
            self.best = Some((scored, summary.clone(), model.weights()));
        }
        better
    }

    /// The best epoch and its score, if any score was finite.
    pub fn best(&self) -> Option<&ScoredEpoch> {
        self.best.as_ref().map(|(s, ..)| s)
    }

    /// Loads the best weights into `model` (no-op when nothing was scored); returns the epoch.
    pub(crate) fn restore_into(&self, model: &M) -> Result<Option<usize>, ModelError> {
        match &self.best {
            Some((s, _, weights)) => {
                model.restore(weights, &format!("the best model (epoch {})", s.epoch))?;
                Ok(Some(s.epoch))
            }
            None => Ok(None),
        }
    }
}

impl BestModel<Model> {
    /// A model holding the best weights, on `device`.
    pub fn model(&self, device: Device) -> Result<Option<Model>, ModelError> {
        self.best
            .as_ref()
            .map(|(s, _, sd)| {
                Model::from_state_dict(sd, device, &format!("the best model (epoch {})", s.epoch))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_interval_keeps_scoring_under_the_share() {
        // the measured synthetic case: 1.66 s per scoring, 1.60 s per epoch
        let n = auto_eval_every(1.66, 1.60);
        assert_eq!(n, 13);
        assert!(1.66 / (n as f64 * 1.60) < 0.1);
        assert_eq!(auto_eval_every(0.01, 5.0), 1);
        assert_eq!(auto_eval_every(1.0, 0.0), 10);
    }
    use crate::evaluate::ImageScore;
    use crate::model::CpnetConfig;

    fn summary(ap50: f64) -> ApSummary {
        ApSummary::from_images(vec![ImageScore {
            name: "a".into(),
            n_true: 1,
            n_pred: 1,
            ap: vec![ap50, 0.0, 0.0],
            tp: vec![1, 0, 0],
            fp: vec![0, 1, 1],
            fn_: vec![0, 1, 1],
            iou_sum: vec![0.6, 0.0, 0.0],
        }])
    }

    #[test]
    fn keeps_the_best_ap50_ties_to_the_later_epoch_and_restores_its_weights() {
        let cfg = CpnetConfig { nbase: vec![2, 8, 16, 32, 64], ..Default::default() };
        let model = Model::new(cfg, Device::Cpu).unwrap();
        let mut best = BestModel::new();
        assert!(best.offer(10, &summary(0.5), &model));
        let first_weights = model.state_dict();
        // perturb the weights: a later, worse epoch must not replace the kept copy
        tch::no_grad(|| {
            for (_, mut v) in model.vs.variables() {
                let _ = v.fill_(0.125);
            }
        });
        assert!(!best.offer(20, &summary(0.25), &model));
        assert!(!best.offer(25, &summary(f64::NAN), &model));
        assert_eq!(best.best().map(|b| b.epoch), Some(10));
        let restored = best.model(Device::Cpu).expect("loads").expect("one was kept");
        assert_eq!(restored.state_dict(), first_weights);
        assert!(best.offer(30, &summary(0.5), &model), "a tie goes to the later epoch");
        assert_eq!(best.best().map(|b| b.epoch), Some(30));
        assert_eq!(best.history.iter().map(|s| s.epoch).collect::<Vec<_>>(), vec![10, 20, 25, 30]);
    }
}
