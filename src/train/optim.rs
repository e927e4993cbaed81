//! Optimizers with PyTorch's exact update rules, applied to one flat buffer holding every
//! trainable parameter.
//!
//! - SGD: `torch.optim.SGD(momentum=0.9, weight_decay=wd)` (cellpose `SGD=True`, NimbusImage's worker).
//! - AdamW: `torch.optim.AdamW(lr, weight_decay=wd)`, betas (0.9, 0.999), eps 1e-8 (cellpose default).
//! - RAdam: `torch.optim.RAdam(lr, betas=(0.95, 0.999), eps=1e-8, weight_decay=wd)` (Omnipose).
//!
//! Why flat: CPnet has ~80 parameter tensors, and a per-tensor update costs ~11 kernel launches
//! each; on a GPU the step was launch-bound (~1000 launches for the optimizer alone). At creation
//! the parameters are re-pointed (`set_data`) into views of one buffer `P`, and after the first
//! backward their gradients into views of one buffer `G`; autograd then accumulates in place into
//! `G`, zeroing is one kernel, and each update is a handful of kernels over `P`. The arithmetic
//! per element is unchanged, so results equal the per-tensor rules (the golden test checks torch's).

use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
    Radam,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "SGD",
            OptimizerKind::Adamw => "AdamW",
            OptimizerKind::Radam => "RAdam",
        })
    }
}

const SGD_MOMENTUM: f64 = 0.9;
const ADAMW_BETAS: (f64, f64) = (0.9, 0.999);
const RADAM_BETAS: (f64, f64) = (0.95, 0.999);
const EPS: f64 = 1e-8;

/// Where one parameter lives inside the flat buffers.
struct Segment {
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

pub struct Optimizer {
    kind: OptimizerKind,
    weight_decay: f64,
    params: Vec<Tensor>,
    segments: Vec<Segment>,
    /// All parameters, in their memory order (views of this are the parameters).
    flat: Tensor,
    /// All gradients, once the first backward has produced them.
    grad: Option<Tensor>,
    /// SGD momentum buffer, or Adam's first moment.
    m: Option<Tensor>,
    /// Adam's second moment.
    v: Option<Tensor>,
    /// AdamW's work buffer, the size of the parameters, made once: allocating the update's
    /// temporaries every step cost a fresh 1.2 GB (page faults included) per temporary for
    /// Cellpose-SAM's 304 M parameters.
    scratch: Option<Tensor>,
    /// This step's scalars on the parameters' device (see `set_learning_rate`).
    coeffs: Tensor,
    /// Number of `step()` calls so far (Adam bias correction uses it).
    pub steps: i64,
}

/// Flattens `t` in its memory order (dims sorted by decreasing stride), so a channels-last
/// weight stays channels-last as a view of the flat buffer.
fn memory_order_flat(t: &Tensor) -> Tensor {
    let stride = t.stride();
    let mut dims: Vec<usize> = (0..stride.len()).collect();
    dims.sort_by(|&a, &b| stride[b].cmp(&stride[a]));
    let perm: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    t.detach().permute(perm.as_slice()).contiguous().view([-1])
}

impl Optimizer {
    /// Takes over `params` (all on one device, float32): from now on they are views of one buffer.
    pub fn new(kind: OptimizerKind, params: Vec<Tensor>, weight_decay: f64) -> Self {
        let mut segments = Vec::with_capacity(params.len());
        let mut offset = 0i64;
        let mut pieces = Vec::with_capacity(params.len());
        for p in &params {
            segments.push(Segment { offset, size: p.size(), stride: p.stride() });
            offset += p.numel() as i64;
            pieces.push(memory_order_flat(p));
        }
        let flat = if pieces.is_empty() {
            Tensor::zeros([0], (Kind::Float, tch::Device::Cpu))
        } else {
            Tensor::cat(&pieces, 0)
        };
        let mut params = params;
        tch::no_grad(|| {
            for (p, s) in params.iter_mut().zip(&segments) {
                p.set_data(&flat.as_strided(s.size.as_slice(), s.stride.as_slice(), Some(s.offset)));
            }
        });
        let coeffs = Tensor::zeros([8], (Kind::Float, flat.device()));
        Optimizer {
            kind,
            weight_decay,
            params,
            segments,
            flat,
            grad: None,
            m: None,
            v: None,
            scratch: None,
            coeffs,
            steps: 0,
        }
    }

    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Zeroes all gradients (one kernel once gradients live in the flat buffer).
    pub fn zero_grad(&mut self) {
        match &mut self.grad {
            Some(g) => {
                let _ = g.zero_();
            }
            None => {
                for p in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.detach_().zero_();
                    }
                }
            }
        }
    }

    /// True once every gradient lives in the one buffer [`Optimizer::zero_grad`] zeroes: a
    /// parameter left out of a forward pass then keeps a zero gradient (as PyTorch's would be
    /// after a forward that multiplied its output by zero), instead of having none.
    pub(crate) fn grads_adopted(&self) -> bool {
        self.grad.is_some()
    }

    /// Moves the gradients autograd allocated into one flat buffer (first step only).
    fn adopt_grads(&mut self) -> Option<Tensor> {
        if let Some(g) = &self.grad {
            return Some(g.shallow_clone());
        }
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).collect();
        if grads.iter().any(|g| !g.defined()) {
            return None; // some parameter took no part in the forward pass: nothing safe to fuse
        }
        let flat = Tensor::cat(&grads.iter().map(memory_order_flat).collect::<Vec<_>>(), 0);
        tch::no_grad(|| {
            for (g, s) in grads.into_iter().zip(&self.segments) {
                let mut g = g;
                g.set_data(&flat.as_strided(s.size.as_slice(), s.stride.as_slice(), Some(s.offset)));
            }
        });
        self.grad = Some(flat.shallow_clone());
        Some(flat)
    }

    /// One update with learning rate `lr`, using the parameters' gradients (eager use).
    pub fn step(&mut self, lr: f64) {
        self.set_learning_rate(lr);
        self.apply();
    }

    /// Counts a step and writes its scalars (learning rate, bias corrections, ...) into a small
    /// device tensor that [`Optimizer::apply`] reads. Separate from `apply` so a captured CUDA
    /// graph can replay `apply` while the scalars change every step.
    pub(crate) fn set_learning_rate(&mut self, lr: f64) {
        self.steps += 1;
        let c = self.coefficients(lr, self.steps as f64);
        let host = Tensor::from_slice(&c);
        let dev = self.flat.device();
        if dev.is_cuda() {
            // pinned + non_blocking upload, then a device-to-device copy into the fixed buffer the
            // (possibly graph-captured) update reads: no host/device synchronisation per step
            let staged = host.pin_memory(dev).to_device_(dev, Kind::Float, true, false);
            self.coeffs.copy_(&staged);
        } else {
            self.coeffs.copy_(&host);
        }
    }

    /// Per-step scalars for the update rules below.
    fn coefficients(&self, lr: f64, t: f64) -> [f32; 8] {
        let wd = self.weight_decay;
        let c = match self.kind {
            // d = g + wd p; buf = 0.9 buf + d; p += -lr buf
            OptimizerKind::Sgd => [wd, SGD_MOMENTUM, -lr, 0.0, 0.0, 0.0, 0.0, 0.0],
            OptimizerKind::Adamw => {
                let (b1, b2) = ADAMW_BETAS;
                let bc1 = 1.0 - b1.powf(t);
                let bc2 = 1.0 - b2.powf(t);
                // p *= 1 - lr wd; m = lerp(m, g, 1-b1); v = b2 v + (1-b2) g^2;
                // p += -lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
                [1.0 - lr * wd, 1.0 - b1, b2, 1.0 - b2, bc2.sqrt(), EPS, -lr / bc1, 0.0]
            }
            OptimizerKind::Radam => {
                let (b1, b2) = RADAM_BETAS;
                let bc1 = 1.0 - b1.powf(t);
                let bc2 = 1.0 - b2.powf(t);
                let rho_inf = 2.0 / (1.0 - b2) - 1.0;
                let rho_t = rho_inf - 2.0 * t * b2.powf(t) / bc2;
                // branch-free: p += m * (a / (sqrt(v) + eps) + b); exactly one of a, b is non-zero
                let (a, b) = if rho_t > 5.0 {
                    let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                        .sqrt();
                    (-lr * bc2.sqrt() * rect / bc1, 0.0)
                } else {
                    (0.0, -lr / bc1)
                };
                [wd, 1.0 - b1, b2, 1.0 - b2, a, EPS, b, 0.0]
            }
        };
        c.map(|v| v as f32)
    }

    /// The update itself: device operations only (no host synchronisation, no allocation that
    /// depends on data), so it can be captured into a CUDA graph.
    pub fn apply(&mut self) {
        let Some(g) = self.adopt_grads() else {
            tracing::warn!("optimizer step skipped: not every parameter has a gradient");
            return;
        };
        let k = |i: i64| self.coeffs.select(0, i);
        let p = &mut self.flat;
        tch::no_grad(|| match self.kind {
            OptimizerKind::Sgd => {
                let d = &g + &*p * k(0);
                let mut buf = self.m.take().unwrap_or_else(|| g.zeros_like());
                let _ = buf.g_mul_(&k(1)).g_add_(&d);
                let _ = p.g_add_(&(&buf * k(2)));
                self.m = Some(buf);
            }
            OptimizerKind::Adamw => {
                // the arithmetic of `p += m / (sqrt(v) / k4 + k5) * k6`, step by step in one
                // buffer kept between steps (same operations in the same order: same results)
                let s = self.scratch.get_or_insert_with(|| g.zeros_like());
                let _ = p.g_mul_(&k(0));
                let _ = self.m.get_or_insert_with(|| g.zeros_like()).lerp_tensor_(&g, &k(1));
                let v = self.v.get_or_insert_with(|| g.zeros_like());
                let _ = g.mul_out(s, &k(3));
                let _ = v.g_mul_(&k(2)).addcmul_(s, &g);
                let _ = v.sqrt_out(s);
                let _ = s.g_div_(&k(4)).g_add_(&k(5));
                let m = self.m.as_ref().expect("made above");
                let _ = m.div_out(s, s);
                let _ = s.g_mul_(&k(6));
                let _ = p.g_add_(s);
            }
            OptimizerKind::Radam => {
                let g = &g + &*p * k(0);
                let (m, v) = moments(&mut self.m, &mut self.v, &g, &k(1), &k(2), &k(3));
                let update = m * (k(4) / (v.sqrt() + k(5)) + k(6));
                let _ = p.g_add_(&update);
            }
        });
    }

    /// Optimizer state for checkpoints: flat moment buffers.
    pub(crate) fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        if let Some(m) = &self.m {
            out.push(("m".to_string(), m.shallow_clone()));
        }
        if let Some(v) = &self.v {
            out.push(("v".to_string(), v.shallow_clone()));
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_tensors`]; buffers of the wrong size are
    /// ignored (a different network), which restarts the moments from zero.
    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)], steps: i64) {
        self.steps = steps;
        let n = self.flat.numel();
        for (name, t) in tensors {
            if t.numel() != n {
                tracing::warn!(name, "optimizer state has the wrong size; starting it afresh");
                continue;
            }
            let t = t.to_device(self.flat.device()).to_kind(Kind::Float).view([-1]);
            match name.as_str() {
                "m" => self.m = Some(t),
                "v" => self.v = Some(t),
                _ => {}
            }
        }
    }
}

/// Updates and returns (m, v): m = lerp(m, g, 1-b1), v = b2 v + (1-b2) g^2.
fn moments(
    m: &mut Option<Tensor>,
    v: &mut Option<Tensor>,
    g: &Tensor,
    one_minus_b1: &Tensor,
    b2: &Tensor,
    one_minus_b2: &Tensor,
) -> (Tensor, Tensor) {
    let mut mm = m.take().unwrap_or_else(|| g.zeros_like());
    let mut vv = v.take().unwrap_or_else(|| g.zeros_like());
    let _ = mm.lerp_tensor_(g, one_minus_b1);
    let _ = vv.g_mul_(b2).addcmul_(&(g * one_minus_b2), g);
    *m = Some(mm.shallow_clone());
    *v = Some(vv.shallow_clone());
    (mm, vv)
}
