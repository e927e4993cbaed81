//! Optimizers with PyTorch's exact update rules, written on tch tensors so every algorithm cellpose
//! and Omnipose use is available (tch has no RAdam) and the state can be checkpointed.
//!
//! - SGD: `torch.optim.SGD(momentum=0.9, weight_decay=wd)` (cellpose `SGD=True`, NimbusImage's worker).
//! - AdamW: `torch.optim.AdamW(lr, weight_decay=wd)`, betas (0.9, 0.999), eps 1e-8 (cellpose default).
//! - RAdam: `torch.optim.RAdam(lr, betas=(0.95, 0.999), eps=1e-8, weight_decay=wd)` (Omnipose).

use tch::Tensor;

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

/// Per-parameter state: momentum buffer (SGD) or first/second moments (Adam family).
struct Slot {
    param: Tensor,
    m: Option<Tensor>,
    v: Option<Tensor>,
}

pub struct Optimizer {
    kind: OptimizerKind,
    slots: Vec<Slot>,
    weight_decay: f64,
    /// Number of `step()` calls so far (Adam bias correction uses it).
    pub steps: i64,
}

const SGD_MOMENTUM: f64 = 0.9;
const ADAMW_BETAS: (f64, f64) = (0.9, 0.999);
const RADAM_BETAS: (f64, f64) = (0.95, 0.999);
const EPS: f64 = 1e-8;

impl Optimizer {
    pub fn new(kind: OptimizerKind, params: Vec<Tensor>, weight_decay: f64) -> Self {
        let slots = params.into_iter().map(|param| Slot { param, m: None, v: None }).collect();
        Optimizer { kind, slots, weight_decay, steps: 0 }
    }

    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// One update with learning rate `lr`, using each parameter's `.grad()`.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps as f64;
        let wd = self.weight_decay;
        let kind = self.kind;
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                match kind {
                    OptimizerKind::Sgd => {
                        let d = if wd != 0.0 { &g + &s.param * wd } else { g.shallow_clone() };
                        let buf = match s.m.take() {
                            None => d.detach().copy(),
                            Some(mut b) => {
                                let _ = b.g_mul_scalar_(SGD_MOMENTUM).g_add_(&d);
                                b
                            }
                        };
                        let _ = s.param.g_add_(&(&buf * (-lr)));
                        s.m = Some(buf);
                    }
                    OptimizerKind::Adamw => {
                        let (b1, b2) = ADAMW_BETAS;
                        if wd != 0.0 {
                            let _ = s.param.g_mul_scalar_(1.0 - lr * wd);
                        }
                        let (m, v) = moments(s, &g, b1, b2);
                        let bc1 = 1.0 - b1.powf(t);
                        let bc2 = 1.0 - b2.powf(t);
                        let denom = v.sqrt() / bc2.sqrt() + EPS;
                        let _ = s.param.g_add_(&(m / denom * (-lr / bc1)));
                    }
                    OptimizerKind::Radam => {
                        let (b1, b2) = RADAM_BETAS;
                        let g = if wd != 0.0 { &g + &s.param * wd } else { g.shallow_clone() };
                        let (m, v) = moments(s, &g, b1, b2);
                        let bc1 = 1.0 - b1.powf(t);
                        let bc2 = 1.0 - b2.powf(t);
                        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
                        let rho_t = rho_inf - 2.0 * t * b2.powf(t) / bc2;
                        let update = if rho_t > 5.0 {
                            let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                                .sqrt();
                            m / (v.sqrt() + EPS) * (bc2.sqrt() * rect / bc1)
                        } else {
                            m * (1.0 / bc1)
                        };
                        let _ = s.param.g_add_(&(update * (-lr)));
                    }
                }
            }
        });
    }

    /// Optimizer state for checkpoints: (name, tensor) pairs in parameter order.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(m) = &s.m {
                out.push((format!("{i}.m"), m.shallow_clone()));
            }
            if let Some(v) = &s.v {
                out.push((format!("{i}.v"), v.shallow_clone()));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_tensors`].
    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)], steps: i64) {
        self.steps = steps;
        for (name, t) in tensors {
            let Some((idx, which)) = name.split_once('.') else { continue };
            let Ok(i) = idx.parse::<usize>() else { continue };
            let Some(slot) = self.slots.get_mut(i) else { continue };
            let t = t.to_device(slot.param.device()).to_kind(slot.param.kind());
            match which {
                "m" => slot.m = Some(t),
                "v" => slot.v = Some(t),
                _ => {}
            }
        }
    }
}

/// Updates and returns (m, v) exponential moments for one slot.
fn moments(s: &mut Slot, g: &Tensor, b1: f64, b2: f64) -> (Tensor, Tensor) {
    let mut m = s.m.take().unwrap_or_else(|| g.zeros_like());
    let mut v = s.v.take().unwrap_or_else(|| g.zeros_like());
    let _ = m.lerp_(g, 1.0 - b1);
    let _ = v.g_mul_scalar_(b2).addcmul_(&(g * (1.0 - b2)), g);
    s.m = Some(m.shallow_clone());
    s.v = Some(v.shallow_clone());
    (m, v)
}
