//! CPnet, the residual U-Net of cellpose 3 (`cellpose.resnet_torch.CPnet`), in tch.
//!
//! Every variable is created under the same path as the PyTorch module attribute it mirrors, so
//! `VarStore` names equal cellpose's state_dict keys (`downsample.down.res_down_0.conv.conv_0.0.weight`,
//! `upsample.up.res_up_3.conv.conv_1.full.weight`, `output.2.weight`, `diam_mean`, ...).
//! Blocks are pre-activation: BatchNorm -> ReLU -> conv (`batchconv`), or BatchNorm -> conv for the
//! 1x1 projections (`batchconv0`).

use tch::nn::{self, Init};
use tch::{Kind, TchError, Tensor};

// Every forward op below is a `f_` call returning `Result`: the plain tch methods unwrap, and an
// allocation libtorch cannot make (a --bsize too large for the memory) must be an error that
// names the fix, not a panic.
type TResult = Result<Tensor, TchError>;

/// Shape of a CPnet. Defaults are cellpose 3's: nbase [2, 32, 64, 128, 256], nout 3, 3x3 kernels.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CpnetConfig {
    /// Channels per level, starting with the input channel count (`nchan`).
    pub nbase: Vec<i64>,
    /// Output maps: dY, dX, cellprob (and class maps when > 3).
    pub nout: i64,
    /// Convolution kernel size.
    pub kernel: i64,
    /// Mean object diameter images are rescaled to (cellpose `diam_mean`).
    pub diam_mean: f64,
}

impl Default for CpnetConfig {
    fn default() -> Self {
        CpnetConfig { nbase: vec![2, 32, 64, 128, 256], nout: 3, kernel: 3, diam_mean: 30.0 }
    }
}

impl CpnetConfig {
    pub fn nchan(&self) -> i64 {
        self.nbase[0]
    }
    /// Width of the style vector (the deepest level's channels).
    pub fn style_channels(&self) -> i64 {
        *self.nbase.last().unwrap_or(&0)
    }
}

/// PyTorch's default init for conv and linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight
/// and bias (kaiming_uniform with a = sqrt(5)).
fn torch_default_init(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `nn.BatchNorm2d(n, eps=1e-5, momentum=0.05)`, including the `num_batches_tracked` buffer that
/// PyTorch keeps (tch's own batch norm has none, and the file must carry it).
#[derive(Debug)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
}

pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.05;

impl BatchNorm {
    fn new(p: nn::Path, n: i64) -> Result<Self, TchError> {
        Ok(BatchNorm {
            weight: p.f_var("weight", &[n], Init::Const(1.0))?,
            bias: p.f_var("bias", &[n], Init::Const(0.0))?,
            running_mean: p.f_zeros_no_train("running_mean", &[n])?,
            running_var: p.f_ones_no_train("running_var", &[n])?,
            num_batches_tracked: p.add(
                "num_batches_tracked",
                Tensor::f_zeros([], (Kind::Int64, p.device()))?,
                false,
            ),
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> TResult {
        if train {
            tch::no_grad(|| {
                let mut n = self.num_batches_tracked.shallow_clone();
                n.f_add_scalar_(1).map(|_| ())
            })?;
        }
        Tensor::f_batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
    pad: i64,
}

impl Conv {
    fn new(p: nn::Path, cin: i64, cout: i64, k: i64) -> Result<Self, TchError> {
        let init = torch_default_init(cin * k * k);
        Ok(Conv {
            weight: p.f_var("weight", &[cout, cin, k, k], init)?,
            bias: p.f_var("bias", &[cout], init)?,
            pad: k / 2,
        })
    }
    fn forward(&self, x: &Tensor, ctx: Ctx) -> TResult {
        let (w, b) = (ctx.cast(&self.weight)?, ctx.cast(&self.bias)?);
        x.f_conv2d(&w, Some(&b), [1, 1], [self.pad, self.pad], [1, 1], 1)
    }
}

/// Per-forward settings threaded through the blocks.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    train: bool,
    /// Dtype convolutions run in; weights are cast to it inside the graph.
    kind: Kind,
}

impl Ctx {
    fn cast(&self, t: &Tensor) -> TResult {
        if t.kind() == self.kind {
            Ok(t.shallow_clone())
        } else {
            t.f_to_kind(self.kind)
        }
    }
}

/// `batchconv` (BN, ReLU, conv: children `0`, `1`, `2`) or `batchconv0` (BN, conv: `0`, `1`).
#[derive(Debug)]
struct BatchConv {
    bn: BatchNorm,
    conv: Conv,
    relu: bool,
}

impl BatchConv {
    fn new(p: nn::Path, cin: i64, cout: i64, k: i64) -> Result<Self, TchError> {
        Ok(BatchConv {
            bn: BatchNorm::new(&p / "0", cin)?,
            conv: Conv::new(&p / "2", cin, cout, k)?,
            relu: true,
        })
    }
    fn new0(p: nn::Path, cin: i64, cout: i64, k: i64) -> Result<Self, TchError> {
        Ok(BatchConv {
            bn: BatchNorm::new(&p / "0", cin)?,
            conv: Conv::new(&p / "1", cin, cout, k)?,
            relu: false,
        })
    }
    fn forward_t(&self, x: &Tensor, ctx: Ctx) -> TResult {
        let y = self.bn.forward_t(x, ctx.train)?;
        let y = if self.relu { y.f_relu()? } else { y };
        self.conv.forward(&y, ctx)
    }
}

/// `resdown`: x = proj(x) + conv1(conv0(x)); x = x + conv3(conv2(x)).
#[derive(Debug)]
struct ResDown {
    conv: Vec<BatchConv>,
    proj: BatchConv,
}

impl ResDown {
    fn new(p: nn::Path, cin: i64, cout: i64, k: i64) -> Result<Self, TchError> {
        let conv = (0..4)
            .map(|t| {
                BatchConv::new(&p / "conv" / format!("conv_{t}"), if t == 0 { cin } else { cout }, cout, k)
            })
            .collect::<Result<_, _>>()?;
        Ok(ResDown { conv, proj: BatchConv::new0(&p / "proj", cin, cout, 1)? })
    }
    fn forward_t(&self, x: &Tensor, ctx: Ctx) -> TResult {
        let c = &self.conv;
        let x = self.proj.forward_t(x, ctx)?.f_add(&c[1].forward_t(&c[0].forward_t(x, ctx)?, ctx)?)?;
        let y = c[3].forward_t(&c[2].forward_t(&x, ctx)?, ctx)?;
        x.f_add(&y)
    }
}

/// `batchconvstyle`: conv(x [+ y] + full(style)[..., None, None]).
#[derive(Debug)]
struct BatchConvStyle {
    conv: BatchConv,
    full_w: Tensor,
    full_b: Tensor,
}

impl BatchConvStyle {
    fn new(p: nn::Path, cin: i64, cout: i64, style: i64, k: i64) -> Result<Self, TchError> {
        let init = torch_default_init(style);
        let full = &p / "full";
        Ok(BatchConvStyle {
            conv: BatchConv::new(&p / "conv", cin, cout, k)?,
            full_w: full.f_var("weight", &[cout, style], init)?,
            full_b: full.f_var("bias", &[cout], init)?,
        })
    }
    fn forward_t(&self, style: &Tensor, x: &Tensor, y: Option<&Tensor>, ctx: Ctx) -> TResult {
        let feat = style.f_linear(&self.full_w, Some(&self.full_b))?.f_unsqueeze(-1)?.f_unsqueeze(-1)?;
        let x = match y {
            Some(y) => x.f_add(y)?,
            None => x.shallow_clone(),
        };
        self.conv.forward_t(&x.f_add(&ctx.cast(&feat)?)?, ctx)
    }
}

/// `resup`: x = proj(x) + conv1(style, conv0(x), y); x = x + conv3(style, conv2(style, x)).
#[derive(Debug)]
struct ResUp {
    conv0: BatchConv,
    conv_style: Vec<BatchConvStyle>,
    proj: BatchConv,
}

impl ResUp {
    fn new(p: nn::Path, cin: i64, cout: i64, style: i64, k: i64) -> Result<Self, TchError> {
        let conv = &p / "conv";
        Ok(ResUp {
            conv0: BatchConv::new(&conv / "conv_0", cin, cout, k)?,
            conv_style: (1..4)
                .map(|t| BatchConvStyle::new(&conv / format!("conv_{t}"), cout, cout, style, k))
                .collect::<Result<_, _>>()?,
            proj: BatchConv::new0(&p / "proj", cin, cout, 1)?,
        })
    }
    fn forward_t(&self, x: &Tensor, y: &Tensor, style: &Tensor, ctx: Ctx) -> TResult {
        let s = &self.conv_style;
        let h = self.conv0.forward_t(x, ctx)?;
        let x = self.proj.forward_t(x, ctx)?.f_add(&s[0].forward_t(style, &h, Some(y), ctx)?)?;
        let h = s[1].forward_t(style, &x, None, ctx)?;
        let h = s[2].forward_t(style, &h, None, ctx)?;
        x.f_add(&h)
    }
}

/// The network. Build it inside a `VarStore` with [`Cpnet::new`]; load weights with
/// [`crate::model::load_model`].
#[derive(Debug)]
pub struct Cpnet {
    pub config: CpnetConfig,
    down: Vec<ResDown>,
    up: Vec<ResUp>,
    output: BatchConv,
    /// `diam_mean` parameter (not trained): the object size training rescales to.
    pub diam_mean: Tensor,
    /// `diam_labels` parameter (not trained): mean diameter of the training labels.
    pub diam_labels: Tensor,
}

/// What one forward pass returns: the output maps and the style vector.
pub struct NetOutput {
    /// `[B, nout, H, W]`: dY, dX, cellprob logits (and class maps).
    pub maps: Tensor,
    /// `[B, style_channels]`, L2-normalised.
    pub style: Tensor,
}

impl Cpnet {
    /// Creates the variables under `root` with cellpose's initialisation (PyTorch defaults).
    /// Fails (never panics) when libtorch cannot allocate them; callers check the widths against
    /// [`crate::limits::cpnet_widths`] first so that the message can name the option.
    pub fn new(root: &nn::Path, config: CpnetConfig) -> Result<Self, TchError> {
        let nb = &config.nbase;
        let k = config.kernel;
        let down = (0..nb.len() - 1)
            .map(|n| {
                ResDown::new(root / "downsample" / "down" / format!("res_down_{n}"), nb[n], nb[n + 1], k)
            })
            .collect::<Result<_, _>>()?;
        // nbaseup = nbase[1:] + [nbase[-1]]
        let mut nbu: Vec<i64> = nb[1..].to_vec();
        nbu.push(*nbu.last().unwrap_or(&0));
        let style = config.style_channels();
        let up = (1..nbu.len())
            .map(|n| {
                ResUp::new(
                    root / "upsample" / "up" / format!("res_up_{}", n - 1),
                    nbu[n],
                    nbu[n - 1],
                    style,
                    k,
                )
            })
            .collect::<Result<_, _>>()?;
        let output = BatchConv::new(root / "output", nbu[0], config.nout, 1)?;
        let d = config.diam_mean;
        let diam_mean =
            root.add("diam_mean", Tensor::from_slice(&[d as f32]).f_to_device(root.device())?, false);
        let diam_labels =
            root.add("diam_labels", Tensor::from_slice(&[d as f32]).f_to_device(root.device())?, false);
        Ok(Cpnet { config, down, up, output, diam_mean, diam_labels })
    }

    /// Forward pass in float32; `train` selects batch statistics (and updates running stats) vs
    /// running stats. Fails (never panics) when libtorch cannot allocate the activations.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<NetOutput, TchError> {
        self.forward_mixed(x, train, Kind::Float)
    }

    /// Forward pass computing convolutions in `compute` (e.g. bfloat16 on GPUs) while weights,
    /// BatchNorm statistics, the style vector and the output layer stay float32: the hand-written equivalent of
    /// autocast, so gradients reach float32 master weights. The output maps are float32.
    pub fn forward_mixed(&self, x: &Tensor, train: bool, compute: Kind) -> Result<NetOutput, TchError> {
        let ctx = Ctx { train, kind: compute };
        let x = ctx.cast(x)?;
        let mut xd: Vec<Tensor> = Vec::with_capacity(self.down.len());
        for (n, block) in self.down.iter().enumerate() {
            let y = match xd.last() {
                None => block.forward_t(&x, ctx)?,
                Some(prev) => {
                    block.forward_t(&prev.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?, ctx)?
                }
            };
            debug_assert_eq!(xd.len(), n);
            xd.push(y);
        }
        let (Some(deepest), Some(last)) = (xd.last(), self.up.len().checked_sub(1)) else {
            return Err(TchError::Shape("CPnet has no levels (empty nbase)".into()));
        };
        let style = deepest.f_to_kind(Kind::Float)?.f_mean_dim([2i64, 3].as_slice(), false, None)?;
        let norm = style.f_square()?.f_sum_dim_intlist([1i64].as_slice(), true, None)?.f_sqrt()?;
        let style = style.f_div(&norm)?;
        let mut h = self.up[last].forward_t(deepest, deepest, &style, ctx)?;
        for n in (0..last).rev() {
            let (hh, ww) = (h.size()[2] * 2, h.size()[3] * 2);
            h = h.f_upsample_nearest2d([hh, ww], Some(2.0), Some(2.0))?;
            h = self.up[n].forward_t(&h, &xd[n], &style, ctx)?;
        }
        // the output layer in float32: in bf16 its flows (up to +-5 after cellpose's scaling)
        // would be rounded to steps of up to 1/32 before the loss, which is what outlines are made of
        let out_ctx = Ctx { kind: Kind::Float, ..ctx };
        Ok(NetOutput { maps: self.output.forward_t(&h.f_to_kind(Kind::Float)?, out_ctx)?, style })
    }

    pub fn diam_mean(&self) -> f64 {
        self.diam_mean.double_value(&[0])
    }
    pub fn diam_labels(&self) -> f64 {
        self.diam_labels.double_value(&[0])
    }
    /// Stores `diam_labels` (the mean diameter of the training labels, or `--diameter`): every
    /// later prediction rescales by diam_mean / diam_labels, so a value outside
    /// [`crate::limits::diameter`]'s range is refused here rather than saved into a model that
    /// then fails on every image.
    pub fn set_diam_labels(&self, v: f64) -> Result<(), crate::limits::LimitError> {
        crate::limits::diameter("diam_labels", v)?;
        tch::no_grad(|| {
            let _ = self.diam_labels.shallow_clone().f_fill_(v);
        });
        Ok(())
    }
    pub fn set_diam_mean(&self, v: f64) {
        tch::no_grad(|| {
            let _ = self.diam_mean.shallow_clone().f_fill_(v);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_libtorch_cannot_make_is_an_error_not_a_panic() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Cpnet::new(&vs.root(), CpnetConfig { nbase: vec![2, 4, 8], ..Default::default() }).unwrap();
        // a 2^45-element view of 2 stored floats: the first activation would need 128 TB
        let x = Tensor::zeros([1, 2, 1, 1], (Kind::Float, tch::Device::Cpu))
            .expand([1, 2, 1 << 22, 1 << 22], false);
        let err =
            tch::no_grad(|| net.forward_t(&x, false)).err().expect("a 128 TB activation cannot be allocated");
        assert!(err.to_string().contains("allocate"), "{err}");
        let small = Tensor::zeros([1, 2, 16, 16], (Kind::Float, tch::Device::Cpu));
        let out = tch::no_grad(|| net.forward_t(&small, false)).expect("a 16x16 image runs");
        assert_eq!(out.maps.size(), [1, 3, 16, 16]);
    }
}
