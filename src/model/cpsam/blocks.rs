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

fn f_linear(l: &Layer, x: &Tensor) -> Result<Tensor, TchError> {
    x.f_linear(&l.ws, l.bs.as_ref())
}

fn f_conv(c: &Layer, x: &Tensor, padding: i64) -> Result<Tensor, TchError> {
    x.f_conv2d(&c.ws, c.bs.as_ref(), [1, 1], [padding, padding], [1, 1], 1)
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

    /// `x`: `[B, H, W, dim]` tokens -> `[B, H, W, dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let [b, h, w, dim] = x.size()[..] else {
            return Err(TchError::Shape(format!(
                "attention takes [B, H, W, dim] tokens, got {:?}",
                x.size()
            )));
        };
        let hd = dim / self.heads;
        // [B, HW, 3, heads, hd] -> [3, B, heads, HW, hd]
        let qkv =
            f_linear(&self.qkv, x)?.f_reshape([b, h * w, 3, self.heads, hd])?.f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_select(0, 0)?, qkv.f_select(0, 1)?, qkv.f_select(0, 2)?);
        // relative-position bias from the unscaled queries, as SAM computes it
        let rh = rel_pos_for(&self.rel_pos_h, h)?;
        let rw = rel_pos_for(&self.rel_pos_w, w)?;
        let rq = q.f_reshape([b * self.heads, h, w, hd])?;
        let rel_h = Tensor::f_einsum("bhwc,hkc->bhwk", &[&rq, &rh], None::<i64>)?;
        let rel_w = Tensor::f_einsum("bhwc,wkc->bhwk", &[&rq, &rw], None::<i64>)?;
        let bias = rel_h.f_unsqueeze(-1)?.f_add(&rel_w.f_unsqueeze(-2)?)?.f_reshape([
            b,
            self.heads,
            h * w,
            h * w,
        ])?;
        // softmax(q k^T / sqrt(hd) + bias) v: libtorch's fused kernel, the same sum as SAM's
        let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, Some(&bias), 0.0, false, None, false)?;
        let y = y.f_view([b, self.heads, h, w, hd])?.f_permute([0, 2, 3, 1, 4])?.f_reshape([b, h, w, dim])?;
        f_linear(&self.proj, &y)
    }
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
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        f_linear(&self.lin2, &f_linear(&self.lin1, x)?.f_gelu("none")?)
    }
}

/// SAM `Block` with `window_size = 0` (cellpose 4 sets every block global):
/// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
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
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let x = x.f_add(&self.attn.forward(&f_layer_norm(&self.norm1, x)?)?)?;
        let y = self.mlp.forward(&f_layer_norm(&self.norm2, &x)?)?;
        x.f_add(&y)
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
    /// `[B, dim, H, W]` -> `[B, neck, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let x = self.norm1.forward(&f_conv(&self.conv0, x, 0)?)?;
        self.norm3.forward(&f_conv(&self.conv2, &x, 1)?)
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
