//! The Cellpose-SAM network (cellpose 4 `vit.CPSAM`) in tch: 8x8 patch embedding, absolute
//! position embeddings for 256x256 tiles, global-attention ViT blocks, SAM's neck, a 1x1 readout
//! to `nout * ps^2` maps per token, and the fixed transposed convolution `W2` that lays each
//! token's maps back out as a `ps x ps` pixel patch.

use tch::nn;
use tch::{Device, Kind, TchError, Tensor};

use super::blocks::{conv2d, Block, BlockShape, Layer, Neck};

/// Shape of a CPSAM. `Default` is cellpose 4's: SAM ViT-L (width 1024, 24 blocks, 16 heads,
/// MLP 4096, neck 256) with 8x8 patches on 256x256 tiles, 3 outputs, layer drop up to 0.4.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CpsamConfig {
    /// Input channels of the patch embedding (3; images with fewer use the first weights).
    pub in_chans: i64,
    /// Token width.
    pub dim: i64,
    /// One entry per transformer block.
    pub blocks: Vec<BlockShape>,
    /// Patch (token) size in pixels.
    pub ps: i64,
    /// Token grid of the position embedding (tile size / ps).
    pub grid: (i64, i64),
    /// Neck width.
    pub neck: i64,
    /// Output maps: dY, dX, cellprob.
    pub nout: i64,
    /// Largest layer-drop probability (cellpose `rdrop`), reached by the last block.
    pub rdrop: f64,
}

impl Default for CpsamConfig {
    fn default() -> Self {
        // SAM ViT-L: windowed blocks (window 14 -> 27 table rows) except the global ones
        // (5, 11, 17, 23: 64x64 grid -> 127 rows); cellpose 4 keeps those tables as they are.
        let blocks = (0..24)
            .map(|i| {
                let rows = if [5, 11, 17, 23].contains(&i) { 127 } else { 27 };
                BlockShape { dim: 1024, heads: 16, mlp_dim: 4096, rel_len: (rows, rows) }
            })
            .collect();
        CpsamConfig { in_chans: 3, dim: 1024, blocks, ps: 8, grid: (32, 32), neck: 256, nout: 3, rdrop: 0.4 }
    }
}

impl CpsamConfig {
    /// The tile size the network takes (cellpose 4 `bsize`, 256 for cpsam).
    pub fn bsize(&self) -> i64 {
        self.grid.0 * self.ps
    }
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }
    pub fn heads(&self) -> i64 {
        self.blocks.first().map(|b| b.heads).unwrap_or(0)
    }
}

/// cellpose 4 `CPSAM`.
#[derive(Debug)]
pub struct Cpsam {
    pub config: CpsamConfig,
    patch: Layer,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    neck: Neck,
    out: Layer,
    w2: Tensor,
    diam_mean: Tensor,
    diam_labels: Tensor,
}

impl Cpsam {
    /// Creates the variables under `vs` with cellpose 4's names; new weights use PyTorch-style
    /// init (zero position embeddings and relative-position tables, as SAM starts from).
    /// Fails (never panics) when libtorch cannot allocate them.
    pub fn new(vs: &nn::Path, config: CpsamConfig) -> Result<Self, TchError> {
        let enc = vs / "encoder";
        let ps = config.ps;
        let patch = conv2d(&(&enc / "patch_embed" / "proj"), config.in_chans, config.dim, ps, true)?;
        let pos_embed =
            enc.f_var("pos_embed", &[1, config.grid.0, config.grid.1, config.dim], nn::Init::Const(0.0))?;
        let blocks = config
            .blocks
            .iter()
            .enumerate()
            .map(|(i, s)| Block::new(&enc / "blocks" / i, *s))
            .collect::<Result<_, _>>()?;
        let neck = Neck::new(&enc / "neck", config.dim, config.neck)?;
        let nmap = config.nout * ps * ps;
        let out = conv2d(&(vs / "out"), config.neck, nmap, 1, true)?;
        // W2 = eye(nout*ps^2) as a transposed-conv kernel: token map (o, dy, dx) -> pixel (dy, dx) of channel o
        let eye = Tensor::f_eye(nmap, (Kind::Float, vs.device()))?.f_reshape([nmap, config.nout, ps, ps])?;
        let w2 = vs.add("W2", eye, false);
        let thirty = || Tensor::from_slice(&[30f32]).f_to_device(vs.device());
        let diam_labels = vs.add("diam_labels", thirty()?, false);
        let diam_mean = vs.add("diam_mean", thirty()?, false);
        Ok(Cpsam { config, patch, pos_embed, blocks, neck, out, w2, diam_mean, diam_labels })
    }

    /// `[B, C<=3, bsize, bsize]` -> `[B, nout, bsize, bsize]` (dY, dX, cellprob). The input is cast
    /// to the weights' dtype (bf16 after [`crate::model::CpsamModel::to_kind`]). `train` turns on
    /// layer drop: block `i` of `n` is skipped per sample with probability `rdrop * i / (n - 1)`.
    /// Every libtorch call is a fallible `f_` one: a wrong input shape or an allocation failure
    /// is returned, not raised as a panic.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, TchError> {
        let nlay = self.blocks.len() as i64;
        let draws = match x.size().as_slice() {
            [batch, _, _, _] if train && self.config.rdrop > 0.0 && nlay > 0 => {
                Some(Tensor::f_rand([*batch, nlay], (Kind::Float, x.device()))?)
            }
            _ => None,
        };
        self.forward_drawn(x, draws.as_ref())
    }

    /// [`Cpsam::forward_t`] with the layer drop's uniform draws given: `[B, n_blocks]` in
    /// [0, 1), block `i` skipped for sample `b` where `draws[b, i]` is below its probability;
    /// `None` drops nothing (eval). Why: a trainer that draws them from its own seeded stream gets
    /// the same drops after a resume, whatever else used torch's global generator meanwhile.
    pub fn forward_drawn(&self, x: &Tensor, draws: Option<&Tensor>) -> Result<Tensor, TchError> {
        self.forward_mixed(x, draws, self.kind(), false)
    }

    /// [`Cpsam::forward_drawn`] with the matrix products (linear layers, attention, convolutions)
    /// computed in `mm` while the residual stream, the norms, the softmax and the output stay in
    /// the weights' kind: the hand-written equivalent of autocast, so a bf16 forward/backward
    /// trains float32 master weights.
    ///
    /// `skip_dropped`: a block that every sample of the batch drops is not computed at all.
    /// cellpose 4 computes it and multiplies it by zero, which gives bit for bit the same
    /// activations and input gradient and a gradient of exactly zero for the block's weights;
    /// skipped, their gradient is left as it was, so the caller must have zeroed it (true once
    /// the optimizer keeps its gradients in one buffer). At batch 1 this saves a fifth of the
    /// blocks (drop probabilities 0 ... 0.4).
    pub fn forward_mixed(
        &self,
        x: &Tensor,
        draws: Option<&Tensor>,
        mm: Kind,
        skip_dropped: bool,
    ) -> Result<Tensor, TchError> {
        let kind = self.pos_embed.kind();
        let size = x.size();
        let (c, ps) = (size.get(1).copied().unwrap_or(0), self.config.ps);
        if size.len() != 4 || c < 1 || c > self.config.in_chans {
            return Err(TchError::Shape(format!(
                "the cpsam network takes [B, 1..={}, {bs}, {bs}] tiles, got {size:?}",
                self.config.in_chans,
                bs = self.config.bsize()
            )));
        }
        // cellpose 4 convolves with `proj.weight.data[:, :C]`: fewer channels = zero-padded ones,
        // and `.data` keeps the patch embedding out of the gradient.
        let w = self.patch.ws.detach().f_narrow(1, 0, c)?.f_to_kind(mm)?;
        let b = self.patch.bs.as_ref().map(|b| b.detach().f_to_kind(mm)).transpose()?;
        let mut x = x
            .f_to_kind(mm)?
            .f_conv2d(&w, b.as_ref(), [ps, ps], [0, 0], [1, 1], 1)?
            .f_to_kind(kind)?
            .f_permute([0, 2, 3, 1])?
            .f_add(&self.pos_embed)?;
        let nlay = self.blocks.len() as i64;
        if let Some(draws) = draws.filter(|_| self.config.rdrop > 0.0 && nlay > 0) {
            let batch = size[0];
            if draws.size() != [batch, nlay] {
                return Err(TchError::Shape(format!(
                    "layer-drop draws must be [{batch}, {nlay}], got {:?}",
                    draws.size()
                )));
            }
            let p = Tensor::f_linspace(0.0, self.config.rdrop, nlay, (Kind::Float, draws.device()))?;
            let skip_cpu = draws.f_to_device(Device::Cpu)?.f_lt_tensor(&p.f_to_device(Device::Cpu)?)?;
            // blocks every sample drops (read on the host: the draws are small and host-made)
            let all_drop: Vec<bool> = Vec::<bool>::try_from(skip_cpu.f_all_dim(0, false)?)?;
            let skip = skip_cpu.f_to_device(x.device())?.f_to_kind(kind)?;
            for (i, blk) in self.blocks.iter().enumerate() {
                if skip_dropped && all_drop[i] {
                    continue;
                }
                let m = skip.f_select(1, i as i64)?.f_view([batch, 1, 1, 1])?;
                let y = blk.forward(&x, mm)?;
                x = x.f_mul(&m)?.f_add(&y.f_mul(&m.f_rsub_scalar(1.0)?)?)?;
            }
        } else {
            for blk in &self.blocks {
                x = blk.forward(&x, mm)?;
            }
        }
        let feat = self.neck.forward(&x.f_permute([0, 3, 1, 2])?, mm)?;
        let maps = feat
            .f_to_kind(mm)?
            .f_conv2d(
                &self.out.ws.f_to_kind(mm)?,
                self.out.bs.as_ref().map(|b| b.f_to_kind(mm)).transpose()?.as_ref(),
                [1, 1],
                [0, 0],
                [1, 1],
                1,
            )?
            .f_to_kind(kind)?;
        // W2 only lays token maps out as pixels (an identity kernel): in the weights' kind
        maps.f_conv_transpose2d(&self.w2, None::<&Tensor>, [ps, ps], [0, 0], [0, 0], 1, [1, 1])
    }

    pub fn device(&self) -> Device {
        self.pos_embed.device()
    }
    pub fn kind(&self) -> Kind {
        self.pos_embed.kind()
    }
    /// Stored `diam_mean` (cellpose 4 keeps 30 and rescales by 30 / diameter whatever it says).
    pub fn diam_mean(&self) -> f64 {
        self.diam_mean.double_value(&[0])
    }
    /// Stored `diam_labels` (mean training-mask diameter of a fine-tuned model).
    pub fn diam_labels(&self) -> f64 {
        self.diam_labels.double_value(&[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> CpsamConfig {
        let b = BlockShape { dim: 16, heads: 2, mlp_dim: 32, rel_len: (7, 7) };
        CpsamConfig { dim: 16, blocks: vec![b, b], grid: (4, 4), neck: 8, ..Default::default() }
    }

    #[test]
    fn output_has_nout_maps_at_input_resolution() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Cpsam::new(&vs.root(), tiny()).unwrap();
        let x = Tensor::randn([2, 2, 32, 32], (Kind::Float, Device::Cpu));
        let y = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
        assert_eq!(y.size(), vec![2, 3, 32, 32]);
    }

    #[test]
    fn w2_places_token_maps_as_pixel_patches() {
        // a single token whose map k = o*ps*ps + dy*ps + dx must land at channel o, pixel (dy, dx)
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Cpsam::new(&vs.root(), tiny()).unwrap();
        let n = 3 * 64;
        let maps = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([1, n, 1, 1]);
        let px = maps.conv_transpose2d(&net.w2, None::<&Tensor>, [8, 8], [0, 0], [0, 0], 1, [1, 1]);
        assert_eq!(px.size(), vec![1, 3, 8, 8]);
        assert_eq!(px.double_value(&[0, 2, 3, 5]), (2 * 64 + 3 * 8 + 5) as f64);
    }

    #[test]
    fn layer_drop_only_changes_training_forward() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = tiny();
        cfg.rdrop = 1.0; // the last block is always dropped in training
        let net = Cpsam::new(&vs.root(), cfg).unwrap();
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let (e1, e2, t) =
            tch::no_grad(|| (net.forward_t(&x, false), net.forward_t(&x, false), net.forward_t(&x, true)));
        let (e1, e2, t) = (e1.unwrap(), e2.unwrap(), t.unwrap());
        assert!(e1.allclose(&e2, 0.0, 0.0, false));
        assert!((e1 - t).abs().max().double_value(&[]) > 1e-6);
    }

    #[test]
    fn default_is_vit_l_with_350_tensors() {
        let c = CpsamConfig::default();
        assert_eq!((c.dim, c.depth(), c.heads(), c.neck, c.bsize()), (1024, 24, 16, 256, 256));
        assert_eq!(c.blocks[5].rel_len, (127, 127));
        assert_eq!(c.blocks[0].rel_len, (27, 27));
    }
}

#[cfg(test)]
mod skip_tests {
    use super::*;

    /// Output, input gradient and every parameter gradient of one training pass.
    fn pass(net: &Cpsam, vs: &nn::VarStore, x: &Tensor, draws: &Tensor, skip: bool) -> Vec<(String, Tensor)> {
        for (_, t) in vs.variables() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let x = x.detach().set_requires_grad(true);
        let y = net.forward_mixed(&x, Some(draws), Kind::Float, skip).unwrap();
        (&y * &y).sum(Kind::Float).backward();
        let mut out = vec![("output".to_string(), y.detach()), ("input grad".to_string(), x.grad().copy())];
        let mut vars: Vec<_> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            let g = t.grad();
            out.push((name, if g.defined() { g.copy() } else { t.zeros_like() }));
        }
        out
    }

    #[test]
    fn a_block_every_sample_drops_is_skipped_with_bit_identical_results() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let b = BlockShape { dim: 16, heads: 2, mlp_dim: 32, rel_len: (7, 7) };
        let cfg = CpsamConfig { dim: 16, blocks: vec![b, b, b], grid: (4, 4), neck: 8, ..Default::default() };
        let net = Cpsam::new(&vs.root(), cfg).unwrap();
        for (_, mut t) in vs.variables() {
            tch::no_grad(|| {
                let _ = t.g_add_(&(t.randn_like() * 0.1));
            });
        }
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        // probabilities 0, 0.2, 0.4: block 2 dropped by both samples, block 1 by one
        let draws = Tensor::from_slice(&[0.5f32, 0.1, 0.0, 0.5, 0.9, 0.3]).view([2, 3]);
        let computed = pass(&net, &vs, &x, &draws, false);
        let skipped = pass(&net, &vs, &x, &draws, true);
        for ((name, a), (_, b)) in computed.iter().zip(&skipped) {
            assert!(a.equal(b), "`{name}` differs when the dropped block is skipped");
        }
        // what makes skipping right: the dropped block's weights get a gradient of exactly zero
        let dropped = computed.iter().find(|(n, _)| n == "encoder.blocks.2.mlp.lin1.weight").unwrap();
        assert_eq!(dropped.1.abs().sum(Kind::Float).double_value(&[]), 0.0);
        let kept = computed.iter().find(|(n, _)| n == "encoder.blocks.1.mlp.lin1.weight").unwrap();
        assert!(kept.1.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
