//! The blocks of Cellpose-SAM's encoder, SAM's `ImageEncoderViT` as cellpose 4 modifies it
//! (segment_anything `modeling/image_encoder.py`, `modeling/common.py`): pre-norm transformer
//! blocks with global multi-head attention plus SAM's decomposed relative-position terms, an MLP
//! with exact GELU, and the convolutional neck with channel-wise `LayerNorm2d`.
//!
//! Paths equal the PyTorch attribute names (`norm1`, `attn.qkv`, `attn.rel_pos_h`, `mlp.lin1`,
//! `neck.0`, ...), so `VarStore` names are cellpose 4's state_dict keys.

use tch::nn::{self, Init};
use tch::{Kind, TchError, Tensor};

/// SAM builds every LayerNorm with `eps=1e-6` (`partial(nn.LayerNorm, eps=1e-6)`, `LayerNorm2d`).
pub const LN_EPS: f64 = 1e-6;

/// A layer's weight and optional bias: what tch's `nn::Linear`, `nn::Conv2D` and `nn::LayerNorm`
/// hold, made here with the fallible `f_var` (tch's own constructors unwrap, so an allocation
/// libtorch cannot make would panic). Names, shapes, init and draw order are tch's.
#[derive(Debug)]
pub struct Layer {
    pub ws: Tensor,
    pub bs: Option<Tensor>,
}

/// tch `nn::linear(vs, in, out, Default::default())`: bias U(±1/sqrt(in)) drawn first, then
/// the weight (kaiming uniform).
pub fn linear(vs: &nn::Path, in_dim: i64, out_dim: i64) -> Result<Layer, TchError> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let bs = vs.f_var("bias", &[out_dim], Init::Uniform { lo: -bound, up: bound })?;
    let ws = vs.f_var("weight", &[out_dim, in_dim], nn::LinearConfig::default().ws_init)?;
    Ok(Layer { ws, bs: Some(bs) })
}

/// tch `nn::conv2d(vs, in, out, k, ..)`: bias (zeros) first when there is one, then the weight
/// (kaiming uniform).
pub fn conv2d(vs: &nn::Path, in_dim: i64, out_dim: i64, k: i64, bias: bool) -> Result<Layer, TchError> {
    let c = nn::ConvConfig::default();
    let bs = if bias { Some(vs.f_var("bias", &[out_dim], c.bs_init)?) } else { None };
    let ws = vs.f_var("weight", &[out_dim, in_dim, k, k], c.ws_init)?;
    Ok(Layer { ws, bs })
}

/// tch `nn::layer_norm(p, vec![dim], ..)`: weight ones, bias zeros.
fn layer_norm(p: nn::Path, dim: i64) -> Result<Layer, TchError> {
    let ws = p.f_var("weight", &[dim], Init::Const(1.0))?;
    let bs = p.f_var("bias", &[dim], Init::Const(0.0))?;
    Ok(Layer { ws, bs: Some(bs) })
}

// The forwards below use tch's fallible `f_` calls: a bad input (shape, out of memory) comes back
// as an error for the caller to name, never as a panic inside libtorch's wrapper.

fn f_layer_norm(ln: &Layer, x: &Tensor) -> Result<Tensor, TchError> {
    x.f_layer_norm(ln.ws.size().as_slice(), Some(&ln.ws), ln.bs.as_ref(), LN_EPS, true)
}

/// `x @ W^T + b` computed in `mm` (bf16 for mixed precision, else the weights' kind): the
/// weights are cast where they are used, so gradients still reach the float32 master copy, as
/// autocast does for `linear`.
fn f_linear(l: &Layer, x: &Tensor, mm: Kind) -> Result<Tensor, TchError> {
    let b = l.bs.as_ref().map(|b| b.f_to_kind(mm)).transpose()?;
    x.f_to_kind(mm)?.f_linear(&l.ws.f_to_kind(mm)?, b.as_ref())
}

/// A bias-free or biased convolution computed in `mm` (see [`f_linear`]).
fn f_conv(c: &Layer, x: &Tensor, padding: i64, mm: Kind) -> Result<Tensor, TchError> {
    let b = c.bs.as_ref().map(|b| b.f_to_kind(mm)).transpose()?;
    x.f_to_kind(mm)?.f_conv2d(&c.ws.f_to_kind(mm)?, b.as_ref(), [1, 1], [padding, padding], [1, 1], 1)
}

/// SAM `get_rel_pos` for equal query and key sizes: the table (`[L, head_dim]`, sized for the
/// window the block was pre-trained with) is linearly resized to `2 * size - 1` rows
/// (`F.interpolate(mode="linear")`, align_corners=False) and gathered at `i - j + size - 1`,
/// giving `[size, size, head_dim]`.
pub fn rel_pos_for(table: &Tensor, size: i64) -> Result<Tensor, TchError> {
    let want = 2 * size - 1;
    let rows = table.size().first().copied().unwrap_or(0);
    let resized = if rows == want {
        table.shallow_clone()
    } else {
        // [L, C] -> [1, C, L] -> linear resize -> [want, C]
        table
            .f_transpose(0, 1)?
            .f_unsqueeze(0)?
            .f_upsample_linear1d([want], false, None)?
            .f_squeeze_dim(0)?
            .f_transpose(0, 1)?
    };
    let i = Tensor::f_arange(size, (Kind::Int64, table.device()))?;
    let idx = i.f_unsqueeze(1)?.f_sub(&i.f_unsqueeze(0)?)?.f_add_scalar(size - 1)?;
    resized.f_index_select(0, &idx.f_flatten(0, 1)?)?.f_view([size, size, -1])
}

/// `Attention`: fused qkv projection, global attention over the token grid with the additive
/// decomposed relative-position bias (SAM `add_decomposed_rel_pos`), output projection.
#[derive(Debug)]
pub struct Attention {
    qkv: Layer,
    proj: Layer,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    heads: i64,
}

impl Attention {
    /// `rel_len` = rows of the stored tables (`2 * window - 1`; SAM's pre-training windows).
    pub fn new(vs: nn::Path, dim: i64, heads: i64, rel_len: (i64, i64)) -> Result<Self, TchError> {
        let head_dim = dim / heads.max(1);
        Ok(Attention {
            qkv: linear(&(&vs / "qkv"), dim, 3 * dim)?,
            proj: linear(&(&vs / "proj"), dim, dim)?,
            // SAM zero-initialises the tables (rel_pos_zero_init=True)
            rel_pos_h: vs.f_var("rel_pos_h", &[rel_len.0, head_dim], Init::Const(0.0))?,
            rel_pos_w: vs.f_var("rel_pos_w", &[rel_len.1, head_dim], Init::Const(0.0))?,
            heads,
        })
    }

    /// `x`: `[B, H, W, dim]` tokens -> `[B, H, W, dim]` in `mm`, the kind matrix products are
    /// computed in.
    pub fn forward(&self, x: &Tensor, mm: Kind) -> Result<Tensor, TchError> {
        let [b, h, w, dim] = x.size()[..] else {
            return Err(TchError::Shape(format!(
                "attention takes [B, H, W, dim] tokens, got {:?}",
                x.size()
            )));
        };
        let hd = dim / self.heads;
        // [B, HW, 3, heads, hd] -> [3, B, heads, HW, hd]
        let qkv = f_linear(&self.qkv, x, mm)?
            .f_reshape([b, h * w, 3, self.heads, hd])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_select(0, 0)?, qkv.f_select(0, 1)?, qkv.f_select(0, 2)?);
        // relative-position terms from the unscaled queries, as SAM computes them:
        // rel_h[b, i, j, k] = q[i, j] . Rh[i, k] and rel_w[b, i, j, l] = q[i, j] . Rw[j, l]
        let rh = rel_pos_for(&self.rel_pos_h, h)?.f_to_kind(mm)?;
        let rw = rel_pos_for(&self.rel_pos_w, w)?.f_to_kind(mm)?;
        let rq = q.f_reshape([b * self.heads, h, w, hd])?;
        let rel_h = Tensor::f_einsum("bhwc,hkc->bhwk", &[&rq, &rh], None::<i64>)?;
        let rel_w = Tensor::f_einsum("bhwc,wkc->bhwk", &[&rq, &rw], None::<i64>)?;
        let scale = (hd as f64).powf(-0.5);
        let y = if hd >= h + w {
            folded_attention(&q, &k, &v, &rel_h, &rel_w, scale)?
        } else {
            explicit_attention(&q, &k, &v, &rel_h, &rel_w, scale)?
        };
        let y = y.f_view([b, self.heads, h, w, hd])?.f_permute([0, 2, 3, 1, 4])?.f_reshape([b, h, w, dim])?;
        f_linear(&self.proj, &y, mm)
    }
}

/// SAM's own arithmetic: `softmax(q k^T * scale + rel_h + rel_w) v` with the `[HW, HW]` scores
/// materialised (softmax in float32, as autocast runs it). The faster form where the relative
/// terms are wide compared with a head (small networks): measured on 2 cores for the tiny test
/// network (2 heads of 32, 32x32 tokens), forward + backward 10-15 ms per block against 16-25 ms
/// for libtorch's attention with the bias passed as a mask.
fn explicit_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel_h: &Tensor,
    rel_w: &Tensor,
    scale: f64,
) -> Result<Tensor, TchError> {
    let [b, heads, n, _] = q.size()[..] else { return Err(TchError::Shape("attention q".into())) };
    let [_, h, w, _] = rel_h.size()[..] else { return Err(TchError::Shape("attention rel_h".into())) };
    let scores = q.f_mul_scalar(scale)?.f_matmul(&k.f_transpose(-2, -1)?)?.f_view([b * heads, h, w, h, w])?;
    let scores = scores.f_add(&rel_h.f_unsqueeze(-1)?)?.f_add(&rel_w.f_unsqueeze(-2)?)?;
    let p = scores.f_view([b, heads, n, n])?.f_softmax(-1, Kind::Float)?.f_to_kind(v.kind())?;
    p.f_matmul(v)
}

/// The same sum with the relative terms folded into the dot product, so libtorch's fused
/// (flash) attention runs without a `[HW, HW]` mask: the query is extended by its `rel_h` and
/// `rel_w` rows and the key of token `(k, l)` by one-hot rows for `k` and `l`, giving
/// `q'.k' = scale q.k + rel_h[k] + rel_w[l]`; the value is zero-padded to the same width and the
/// padding cut from the output. Twice the products for SAM ViT-L's heads (64 wide, 32 + 32
/// relative columns), but no score matrix in memory: forward + backward 174-196 ms per ViT-L block
/// against 262-304 ms with a mask and 250-270 ms explicit (2 cores, fp32); in bf16 101 ms against
/// 140 ms explicit.
fn folded_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel_h: &Tensor,
    rel_w: &Tensor,
    scale: f64,
) -> Result<Tensor, TchError> {
    let [b, heads, n, hd] = q.size()[..] else { return Err(TchError::Shape("attention q".into())) };
    let [_, h, w, _] = rel_h.size()[..] else { return Err(TchError::Shape("attention rel_h".into())) };
    let opts = (q.kind(), q.device());
    let qx = Tensor::f_cat(
        &[q.f_mul_scalar(scale)?, rel_h.f_reshape([b, heads, n, h])?, rel_w.f_reshape([b, heads, n, w])?],
        -1,
    )?;
    // token t = (k, l): one-hot k among h columns, then one-hot l among w columns
    let rows = Tensor::f_eye(h, opts)?.f_repeat_interleave_self_int(w, Some(0), None)?;
    let cols = Tensor::f_eye(w, opts)?.f_repeat([h, 1])?;
    let keys = Tensor::f_cat(&[rows, cols], 1)?.f_expand([b, heads, n, h + w], false)?;
    let kx = Tensor::f_cat(&[k.shallow_clone(), keys], -1)?;
    let vx = v.f_constant_pad_nd([0, h + w])?;
    let y =
        Tensor::f_scaled_dot_product_attention(&qx, &kx, &vx, None::<&Tensor>, 0.0, false, Some(1.0), false)?;
    y.f_narrow(-1, 0, hd)
}

/// `MLPBlock`: lin1 -> GELU (exact, erf) -> lin2.
#[derive(Debug)]
pub struct Mlp {
    lin1: Layer,
    lin2: Layer,
}

impl Mlp {
    pub fn new(vs: nn::Path, dim: i64, hidden: i64) -> Result<Self, TchError> {
        Ok(Mlp { lin1: linear(&(&vs / "lin1"), dim, hidden)?, lin2: linear(&(&vs / "lin2"), hidden, dim)? })
    }
    pub fn forward(&self, x: &Tensor, mm: Kind) -> Result<Tensor, TchError> {
        f_linear(&self.lin2, &f_linear(&self.lin1, x, mm)?.f_gelu("none")?, mm)
    }
}

/// SAM `Block` with `window_size = 0` (cellpose 4 sets every block global):
/// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`. The residual stream and the norms stay in
/// `x`'s kind; attention and MLP compute in `mm` (their outputs added back promote to `x`'s).
#[derive(Debug)]
pub struct Block {
    norm1: Layer,
    attn: Attention,
    norm2: Layer,
    mlp: Mlp,
}

/// Sizes of one transformer block, read from the file (or SAM ViT-L's for a new model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlockShape {
    pub dim: i64,
    pub heads: i64,
    pub mlp_dim: i64,
    /// Rows of `rel_pos_h` and `rel_pos_w`.
    pub rel_len: (i64, i64),
}

impl Block {
    pub fn new(vs: nn::Path, shape: BlockShape) -> Result<Self, TchError> {
        Ok(Block {
            norm1: layer_norm(&vs / "norm1", shape.dim)?,
            attn: Attention::new(&vs / "attn", shape.dim, shape.heads, shape.rel_len)?,
            norm2: layer_norm(&vs / "norm2", shape.dim)?,
            mlp: Mlp::new(&vs / "mlp", shape.dim, shape.mlp_dim)?,
        })
    }
    pub fn forward(&self, x: &Tensor, mm: Kind) -> Result<Tensor, TchError> {
        let kind = x.kind();
        let x = x.f_add(&self.attn.forward(&f_layer_norm(&self.norm1, x)?, mm)?.f_to_kind(kind)?)?;
        let y = self.mlp.forward(&f_layer_norm(&self.norm2, &x)?, mm)?;
        x.f_add(&y.f_to_kind(kind)?)
    }
}

/// segment_anything `LayerNorm2d`: normalises `[B, C, H, W]` over C with biased variance.
#[derive(Debug)]
pub struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm2d {
    pub fn new(vs: nn::Path, n: i64) -> Result<Self, TchError> {
        Ok(LayerNorm2d {
            weight: vs.f_var("weight", &[n], Init::Const(1.0))?,
            bias: vs.f_var("bias", &[n], Init::Const(0.0))?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let u = x.f_mean_dim(1, true, None)?;
        let d = x.f_sub(&u)?;
        let s = d.f_square()?.f_mean_dim(1, true, None)?;
        let y = d.f_div(&s.f_add_scalar(LN_EPS)?.f_sqrt()?)?;
        y.f_mul(&self.weight.f_view([1, -1, 1, 1])?)?.f_add(&self.bias.f_view([1, -1, 1, 1])?)
    }
}

/// The neck: `0` 1x1 conv (no bias) dim -> neck, `1` LayerNorm2d, `2` 3x3 conv (no bias), `3` LayerNorm2d.
#[derive(Debug)]
pub struct Neck {
    conv0: Layer,
    norm1: LayerNorm2d,
    conv2: Layer,
    norm3: LayerNorm2d,
}

impl Neck {
    pub fn new(vs: nn::Path, dim: i64, neck: i64) -> Result<Self, TchError> {
        Ok(Neck {
            conv0: conv2d(&(&vs / "0"), dim, neck, 1, false)?,
            norm1: LayerNorm2d::new(&vs / "1", neck)?,
            conv2: conv2d(&(&vs / "2"), neck, neck, 3, false)?,
            norm3: LayerNorm2d::new(&vs / "3", neck)?,
        })
    }
    /// `[B, dim, H, W]` -> `[B, neck, H, W]`: convolutions in `mm`, the norms in `x`'s kind.
    pub fn forward(&self, x: &Tensor, mm: Kind) -> Result<Tensor, TchError> {
        let kind = x.kind();
        let x = self.norm1.forward(&f_conv(&self.conv0, x, 0, mm)?.f_to_kind(kind)?)?;
        self.norm3.forward(&f_conv(&self.conv2, &x, 1, mm)?.f_to_kind(kind)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_pos_gathers_offsets_without_resizing_when_sizes_match() {
        // table row r holds the value r; size 3 needs 5 rows; entry [i][j] = i - j + 2
        let table = Tensor::arange(5, (Kind::Float, tch::Device::Cpu)).unsqueeze(1);
        let r = rel_pos_for(&table, 3).unwrap().squeeze_dim(2);
        let got: Vec<f32> = Vec::try_from(r.flatten(0, 1)).unwrap();
        assert_eq!(got, vec![2., 1., 0., 3., 2., 1., 4., 3., 2.]);
    }

    #[test]
    fn rel_pos_resizes_a_short_table_linearly() {
        // 3 rows [0, 1, 2] resized to 5 rows (align_corners=False): [0, 0.4, 1, 1.6, 2]
        let table = Tensor::from_slice(&[0f32, 1., 2.]).unsqueeze(1);
        let r = rel_pos_for(&table, 3).unwrap();
        // [0][2] -> row 0, [2][0] -> row 4, [1][1] -> row 2, [0][1] -> row 1
        let v = |i: i64, j: i64| r.double_value(&[i, j, 0]);
        assert!((v(0, 2) - 0.0).abs() < 1e-6);
        assert!((v(2, 0) - 2.0).abs() < 1e-6);
        assert!((v(1, 1) - 1.0).abs() < 1e-6);
        assert!((v(0, 1) - 0.4).abs() < 1e-6, "{}", v(0, 1));
    }

    #[test]
    fn layer_norm_2d_normalises_over_channels() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let ln = LayerNorm2d::new(vs.root(), 4).unwrap();
        let x = Tensor::randn([2, 4, 3, 3], (Kind::Float, tch::Device::Cpu)) * 5.0 + 2.0;
        let y = ln.forward(&x).unwrap();
        let mean = y.mean_dim(1, false, None).abs().max().double_value(&[]);
        let var = y.square().mean_dim(1, false, None).mean(Kind::Float).double_value(&[]);
        assert!(mean < 1e-5, "{mean}");
        assert!((var - 1.0).abs() < 1e-3, "{var}");
    }
}

#[cfg(test)]
mod attention_tests {
    use super::*;
    use tch::Device;

    /// Both forms of SAM's attention with relative positions give the same result: the explicit
    /// one (SAM's own arithmetic) and the folded one that libtorch's fused kernel runs.
    #[test]
    fn folded_attention_equals_the_explicit_sum() {
        tch::manual_seed(5);
        let (b, heads, h, w, hd) = (2, 3, 4, 5, 8);
        let n = h * w;
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([b, heads, n, hd], opts);
        let k = Tensor::randn([b, heads, n, hd], opts);
        let v = Tensor::randn([b, heads, n, hd], opts);
        let rel_h = Tensor::randn([b * heads, h, w, h], opts);
        let rel_w = Tensor::randn([b * heads, h, w, w], opts);
        let s = (hd as f64).powf(-0.5);
        let e = explicit_attention(&q, &k, &v, &rel_h, &rel_w, s).unwrap();
        let f = folded_attention(&q, &k, &v, &rel_h, &rel_w, s).unwrap();
        assert_eq!(e.size(), f.size());
        let diff = (&e - &f).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max |explicit - folded| = {diff}");
        // and the sum is the one SAM writes: softmax(q k^T s + rel_h[k] + rel_w[l]) v, by hand for one query
        let (bi, hi, qi) = (1, 2, 7);
        let (qy, qx) = (qi / w, qi % w);
        let scores: Vec<f64> = (0..n)
            .map(|t| {
                let dot = q.get(bi).get(hi).get(qi).dot(&k.get(bi).get(hi).get(t)).double_value(&[]);
                dot * s
                    + rel_h.double_value(&[bi * heads + hi, qy, qx, t / w])
                    + rel_w.double_value(&[bi * heads + hi, qy, qx, t % w])
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
        for c in 0..hd {
            let want: f64 =
                (0..n).map(|t| (scores[t as usize] - m).exp() / z * v.double_value(&[bi, hi, t, c])).sum();
            let got = e.double_value(&[bi, hi, qi, c]);
            assert!((want - got).abs() < 1e-5, "channel {c}: {got} vs {want}");
        }
    }
}
