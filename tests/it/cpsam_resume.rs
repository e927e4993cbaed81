//! Cellpose-SAM checkpoints on the tiny CPSAM fixture (layer drop on): a run stopped by a
//! shutdown mid-epoch, and one continued from an epoch-boundary checkpoint, each resumed in a
//! fresh network loaded from the base file, end with the same weights and losses as an
//! uninterrupted run, bit for bit. A checkpoint holds only the trained tensors and fp32 moments;
//! one of the other family is refused with a message, not misread.

use tch::Device;

use cellpose_train_worker::control::{Control, StopReason};
use cellpose_train_worker::model::torch_file::{read_state_dict_bytes, DType};
use cellpose_train_worker::model::{CpsamModel, Model};
use cellpose_train_worker::train::cpsam::{
    self, checkpoint, train_seg_cpsam, trained_parameters, Cp4PrepareOptions, CpsamTrainConfig,
};
use cellpose_train_worker::train::{
    self, EpochInfo, Example, NoHooks, Optimizer, StepInfo, TrainError, TrainHooks, TrainState,
};

use crate::cpsam_train::synthetic_raw;
use crate::helpers::fixture;

/// Stops (as a shutdown does) after `at` steps; keeps the checkpoint written on the way out and
/// the one after the first epoch.
struct StopAt {
    at: usize,
    seen: usize,
    control: Control,
    interrupted: Option<Vec<u8>>,
    after_epoch0: Option<Vec<u8>>,
}

impl TrainHooks<CpsamModel> for StopAt {
    fn on_step(&mut self, _s: &StepInfo) {
        self.seen += 1;
        if self.seen == self.at {
            self.control.shutdown();
        }
    }
    fn on_epoch(
        &mut self,
        e: &EpochInfo,
        model: &CpsamModel,
        optim: &Optimizer,
        state: &TrainState,
    ) -> Result<(), TrainError> {
        if e.epoch == 0 {
            self.after_epoch0 = Some(checkpoint::encode(model, optim, state).unwrap());
        }
        Ok(())
    }
    fn on_interrupt(&mut self, model: &CpsamModel, optim: &Optimizer, state: &TrainState) {
        self.interrupted = Some(checkpoint::encode(model, optim, state).unwrap());
    }
}

/// A checkpoint of the tiny fixture after one epoch of 2 (for the worker's resume tests).
pub(crate) fn checkpoint_after_one_epoch() -> Vec<u8> {
    let cfg = CpsamTrainConfig { n_epochs: 2, learning_rate: 1e-3, ..Default::default() };
    let control = Control::new();
    let mut stop = StopAt { at: 3, seen: 0, control: control.clone(), interrupted: None, after_epoch0: None };
    let _ = train_seg_cpsam(&base(), &examples(), None, &cfg, &mut stop, &control, None);
    stop.after_epoch0.expect("no checkpoint after epoch 0")
}

fn examples() -> Vec<Example> {
    let raw = synthetic_raw(3, 64, 5);
    cpsam::prepare_cp4(raw, &Cp4PrepareOptions { min_train_masks: 1, ..Default::default() }).unwrap().examples
}

fn base() -> CpsamModel {
    CpsamModel::load(&fixture("cpsam/tiny.pth"), Device::Cpu).unwrap()
}

fn assert_same_weights(a: &CpsamModel, b: &CpsamModel, what: &str) {
    let (va, vb) = (a.vs.variables(), b.vs.variables());
    assert_eq!(va.len(), vb.len());
    for (name, t) in &va {
        assert!(t.equal(&vb[name]), "{what}: `{name}` differs from the uninterrupted run");
    }
}

#[test]
fn cpsam_runs_resumed_mid_epoch_and_at_an_epoch_boundary_equal_an_uninterrupted_run() {
    let data = examples();
    // 3 images, batch 1: 3 steps an epoch, so stopping after 4 steps is epoch 1, step 1
    let cfg = CpsamTrainConfig { n_epochs: 3, learning_rate: 1e-3, seed: 3, ..Default::default() };
    assert!(base().net.config.rdrop > 0.0, "the fixture must drop layers for this test to mean anything");
    let straight = base();
    let full = train_seg_cpsam(&straight, &data, None, &cfg, &mut NoHooks, &Control::new(), None).unwrap();

    let first = base();
    let control = Control::new();
    let mut stop = StopAt { at: 4, seen: 0, control: control.clone(), interrupted: None, after_epoch0: None };
    let err = train_seg_cpsam(&first, &data, None, &cfg, &mut stop, &control, None).unwrap_err();
    assert!(matches!(err, TrainError::Stopped { reason: StopReason::Shutdown, epoch: 1, step: 1 }), "{err}");

    for (what, bytes, at) in [
        ("mid-epoch", stop.interrupted.expect("no checkpoint on shutdown"), (1, 1)),
        ("epoch boundary", stop.after_epoch0.expect("no checkpoint after epoch 0"), (1, 0)),
    ] {
        // a new process: the base model again, then the checkpoint's weights and moments
        let second = base();
        let resume = checkpoint::load(&bytes, "memory", &second).unwrap();
        assert_eq!((resume.state.epoch, resume.state.step), at, "{what}");
        let resumed =
            train_seg_cpsam(&second, &data, None, &cfg, &mut NoHooks, &Control::new(), Some(resume)).unwrap();
        assert_eq!(resumed.train_losses, full.train_losses, "{what}");
        assert_same_weights(&second, &straight, what);
    }
}

#[test]
fn a_cpsam_checkpoint_holds_the_trained_tensors_and_fp32_moments_only() {
    let data = examples();
    let cfg = CpsamTrainConfig { n_epochs: 1, learning_rate: 1e-3, ..Default::default() };
    let model = base();
    let control = Control::new();
    let mut stop = StopAt { at: usize::MAX, seen: 0, control, interrupted: None, after_epoch0: None };
    train_seg_cpsam(&model, &data, None, &cfg, &mut stop, &Control::new(), None).unwrap();
    let bytes = stop.after_epoch0.unwrap();
    let sd = read_state_dict_bytes(&bytes, "memory").unwrap();
    assert_eq!(sd.entries[0].0, "meta", "meta first, so a reader knows the family before the weights");
    let trained = trained_parameters(&model);
    let n: usize = trained.iter().map(|(_, t)| t.numel()).sum();
    let model_entries: Vec<&str> = sd.entries.iter().filter_map(|(k, _)| k.strip_prefix("model.")).collect();
    let mut want: Vec<&str> = trained.iter().map(|(k, _)| k.as_str()).collect();
    want.sort();
    let mut got = model_entries.clone();
    got.sort();
    assert_eq!(got, want, "exactly the tensors AdamW updates");
    assert!(!got.iter().any(|k| k.starts_with("encoder.patch_embed.")), "the untrained patch embedding");
    for name in ["optim.m", "optim.v"] {
        let t = sd.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!((t.dtype, t.numel()), (DType::F32, n), "{name}");
    }
    assert!(sd.entries.iter().all(|(k, t)| k == "meta" || t.dtype == DType::F32));
    let tensor_bytes = 3 * 4 * n;
    assert!(bytes.len() >= tensor_bytes && bytes.len() < tensor_bytes + 64 * 1024, "{} bytes", bytes.len());
    eprintln!("tiny cpsam checkpoint: {} bytes for 3 x {n} fp32 values", bytes.len());
}

#[test]
fn a_checkpoint_of_the_other_family_is_refused_by_name() {
    let data = examples();
    let cfg = CpsamTrainConfig { n_epochs: 1, learning_rate: 1e-3, ..Default::default() };
    let sam = base();
    let mut stop =
        StopAt { at: usize::MAX, seen: 0, control: Control::new(), interrupted: None, after_epoch0: None };
    train_seg_cpsam(&sam, &data, None, &cfg, &mut stop, &Control::new(), None).unwrap();
    let sam_ck = stop.after_epoch0.unwrap();

    let cpnet = Model::new(crate::train::tiny_config(), Device::Cpu).unwrap();
    let err =
        train::Resume::load(&sam_ck, "sam.ckpt", &cpnet).err().expect("a cpsam checkpoint resumed a CPnet");
    let msg = err.to_string();
    assert!(msg.contains("sam.ckpt") && msg.contains("cpsam") && msg.contains("start over"), "{msg}");

    let params: Vec<_> = cpnet.vs.trainable_variables();
    let optim = Optimizer::new(train::OptimizerKind::Sgd, params, 0.0);
    let cp_ck =
        train::checkpoint::encode(&cpnet, &optim, &TrainState { epoch: 1, ..Default::default() }).unwrap();
    let err = checkpoint::load(&cp_ck, "cp.ckpt", &base()).err().expect("a CPnet checkpoint resumed a cpsam");
    let msg = err.to_string();
    assert!(msg.contains("cp.ckpt") && msg.contains("cpnet") && msg.contains("Cellpose-SAM"), "{msg}");
    // meta comes first, so the refusal happens before any weight is copied
    let untouched = base();
    let _ = checkpoint::load(&cp_ck, "cp.ckpt", &untouched);
    assert_same_weights(&untouched, &base(), "a refused checkpoint");
}
