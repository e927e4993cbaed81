//! Network inference for Cellpose-SAM models with cellpose 4.2.1.1's semantics
//! (`CellposeModel.eval(..., compute_masks=False)` -> `_run_net` -> `core.run_net`), which differ
//! from cellpose 3's ([`crate::predict`]) in these ways:
//! - channels: no `channels=[c1, c2]`; the first three channels are used as they are and fewer
//!   are zero-padded (cpsam convolves with the first C kernel slices, the same thing);
//! - scale: `rescale = 30 / diameter` when a diameter is given, else 1 (no diam_mean/diam_labels);
//! - tiles: always `bsize` = 256 (the network's position grid); images smaller than a tile are
//!   padded up to it (`get_pad_yx(min_size=(bsize, bsize))`);
//! - precision: the weights run in bf16 by default (`use_bfloat16=True`), here on CUDA
//!   ([`Precision::Auto`]); the tiles and blended maps are float32;
//! - no style vector (cellpose 4 returns zeros for compatibility).
//!
//! Normalisation (1-99 percentiles per channel) and the taper blending are cellpose 3's.

use ndarray::Array3;
use tch::{Device, Kind, TchError, Tensor};

use crate::model::CpsamModel;
use crate::predict::{taper_mask, tile_starts, Prediction};
use crate::transforms::{self, Channels, Normalize};

/// The mean diameter cellpose 4 rescales images to (`rescale = 30. / diameter`).
pub(crate) const CP4_DIAMETER: f64 = 30.0;
/// cellpose 4 takes at most three channels.
pub(crate) const CP4_MAX_CHANNELS: usize = 3;

/// Which dtype the weights run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Precision {
    /// bf16 on CUDA (cellpose 4's default), fp32 on the CPU (bf16 matmuls are slow there).
    Auto,
    Bf16,
    Fp32,
}

impl Precision {
    pub(crate) fn kind_on(self, device: Device) -> Kind {
        match self {
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp32 => Kind::Float,
            Precision::Auto if device.is_cuda() => Kind::BFloat16,
            Precision::Auto => Kind::Float,
        }
    }
}

/// cellpose 4 `eval` arguments that decide what the network sees.
#[derive(Debug, Clone)]
pub struct Cp4Options {
    pub normalize: Normalize,
    /// Object diameter in pixels; `None` or 0 = no rescale.
    pub diameter: Option<f64>,
    pub tile_overlap: f64,
    pub batch_size: i64,
    /// Resize the maps back to the image (`resample=True`).
    pub resample: bool,
}

impl Default for Cp4Options {
    fn default() -> Self {
        Cp4Options {
            normalize: Normalize::default(),
            diameter: None,
            tile_overlap: 0.1,
            batch_size: 8,
            resample: true,
        }
    }
}

/// cellpose 4's resize factor.
pub(crate) fn cp4_rescale(diameter: Option<f64>) -> f64 {
    match diameter {
        Some(d) if d > 0.0 => CP4_DIAMETER / d,
        _ => 1.0,
    }
}

/// cellpose 4 `get_pad_yx(L, div=16, extra=1, min_size=bsize)` along one axis: (before, after).
pub(crate) fn cp4_pad(len: i64, bsize: i64) -> (i64, i64) {
    let lpad = if len >= bsize { (len + 15) / 16 * 16 - len } else { (bsize - len - 16).max(0) };
    (8 + lpad / 2, 8 + lpad - lpad / 2)
}

/// A libtorch failure inside cpsam inference, named by the step and the tensor it worked on.
/// The input decides these (image size -> allocations, channels -> shapes), so they are errors
/// for the user, not panics.
#[derive(Debug, thiserror::Error)]
pub enum Cp4NetError {
    #[error(
        "cpsam inference failed {step} (tensor `{tensor}`, shape {shape:?}): {detail}; if libtorch ran \
         out of memory, use a smaller image, a larger --diameter or a smaller --batch-size"
    )]
    Torch { step: &'static str, tensor: &'static str, shape: Vec<i64>, detail: String },
    #[error("cpsam inference takes a [C, H, W] image, got shape {0:?}")]
    NotAnImage(Vec<i64>),
}

/// Maps a libtorch error to [`Cp4NetError::Torch`] for `tensor` (its shape taken now). libtorch's
/// message runs on with a C++ backtrace; its first line says what went wrong.
fn at(step: &'static str, name: &'static str, t: &Tensor) -> impl FnOnce(TchError) -> Cp4NetError {
    let shape = t.size();
    move |e| Cp4NetError::Torch {
        step,
        tensor: name,
        shape,
        detail: e.to_string().lines().next().unwrap_or("").trim().to_string(),
    }
}

/// cellpose 4 `core.run_net` for one normalised `[C, H, W]` CPU image: resize by `rsz`, pad,
/// tile at the network's bsize, run in batches, blend with the taper mask, crop the padding.
/// Returns `[nout, H*rsz, W*rsz]` float32 maps on the CPU.
pub(crate) fn run_net_cp4(
    model: &CpsamModel,
    img: &Tensor,
    rsz: Option<f64>,
    opts: &Cp4Options,
) -> Result<Tensor, Cp4NetError> {
    let net = &model.net;
    let device = net.device();
    let bs = net.config.bsize();
    if img.dim() != 3 {
        return Err(Cp4NetError::NotAnImage(img.size()));
    }
    let (img, lyr, lxr) = transforms::resize_by(img, rsz).map_err(at("resizing", "image", img))?;
    let (y1, y2) = cp4_pad(lyr, bs);
    let (x1, x2) = cp4_pad(lxr, bs);
    let padded = img.f_constant_pad_nd([x1, x2, y1, y2]).map_err(at("padding", "image", &img))?;
    let (ly, lx) = (lyr + y1 + y2, lxr + x1 + x2);
    let ys = tile_starts(ly, bs, opts.tile_overlap);
    let xs = tile_starts(lx, bs, opts.tile_overlap);
    let coords: Vec<(i64, i64)> = ys.iter().flat_map(|&y| xs.iter().map(move |&x| (y, x))).collect();
    let nout = net.config.nout;
    let cpu = (Kind::Float, Device::Cpu);
    let mask = taper_mask(bs, bs).map_err(at("making the tile blend mask", "padded", &padded))?;
    let acc = Tensor::f_zeros([nout, ly, lx], cpu).map_err(at("allocating the maps", "padded", &padded))?;
    let navg = Tensor::f_zeros([ly, lx], cpu).map_err(at("allocating the weights", "padded", &padded))?;
    tch::no_grad(|| -> Result<(), Cp4NetError> {
        for chunk in coords.chunks(opts.batch_size.max(1) as usize) {
            let tiles = chunk
                .iter()
                .map(|&(y, x)| padded.f_narrow(1, y, bs)?.f_narrow(2, x, bs))
                .collect::<Result<Vec<_>, _>>()
                .map_err(at("cutting tiles", "padded", &padded))?;
            let batch = Tensor::f_stack(&tiles, 0).and_then(|b| b.f_to_device(device)).map_err(at(
                "stacking tiles",
                "padded",
                &padded,
            ))?;
            let maps = net
                .forward_t(&batch, false)
                .and_then(|m| m.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float))
                .map_err(at("in the network", "batch", &batch))?;
            for (i, &(y, x)) in chunk.iter().enumerate() {
                let blend = || -> Result<(), TchError> {
                    let mut dst = acc.f_narrow(1, y, bs)?.f_narrow(2, x, bs)?;
                    let _ = dst.f_add_(&maps.f_select(0, i as i64)?.f_mul(&mask)?)?;
                    let mut n = navg.f_narrow(0, y, bs)?.f_narrow(1, x, bs)?;
                    let _ = n.f_add_(&mask)?;
                    Ok(())
                };
                blend().map_err(at("blending tiles", "maps", &maps))?;
            }
        }
        Ok(())
    })?;
    let acc = acc.f_div(&navg).map_err(at("averaging tiles", "maps", &acc))?;
    acc.f_narrow(1, y1, lyr).and_then(|a| a.f_narrow(2, x1, lxr)).map_err(at("cropping", "maps", &acc))
}

/// cellpose 4 `CellposeModel.eval(x, diameter, compute_masks=False)` for one 2-D `[C, H, W]`
/// image: the first three channels, normalised, tiled through the network, maps back at the
/// image size.
pub fn predict_cp4(
    model: &CpsamModel,
    raw: &Array3<f32>,
    opts: &Cp4Options,
) -> Result<Prediction, transforms::TransformError> {
    let nchan = raw.dim().0.clamp(1, CP4_MAX_CHANNELS);
    let mut x = transforms::convert_channels(raw.view(), Channels::All { nchan })?;
    transforms::normalize_img(&mut x, &opts.normalize);
    let (c, h, w) = x.dim();
    let rescale = cp4_rescale(opts.diameter);
    let cause = format!("30 / --diameter {}", opts.diameter.unwrap_or(0.0));
    crate::limits::rescaled_image(h, w, c, rescale, &cause).map_err(transforms::TransformError::Rescale)?;
    let rsz = (rescale != 1.0).then_some(rescale);
    let t = transforms::f_array3_to_tensor(&x).map_err(|e| Cp4NetError::Torch {
        step: "copying the image",
        tensor: "image",
        shape: vec![c as i64, h as i64, w as i64],
        detail: e.to_string().lines().next().unwrap_or("").trim().to_string(),
    })?;
    let mut yf = run_net_cp4(model, &t, rsz, opts)?;
    if opts.resample && rsz.is_some() {
        yf = transforms::f_resize_bilinear(&yf, h as i64, w as i64).map_err(at(
            "resizing back to the image",
            "maps",
            &yf,
        ))?;
    }
    let maps = transforms::tensor_to_array3(&yf).map_err(at("copying the maps", "maps", &yf))?;
    let n = maps.dim().0;
    // cellpose 4: dP = yf[..., -3:-1], cellprob = yf[..., -1]
    let dp = maps.slice(ndarray::s![n - 3..n - 1, .., ..]).to_owned();
    let cellprob = maps.index_axis(ndarray::Axis(0), n - 1).to_owned();
    Ok(Prediction { dp, cellprob, style: vec![0.0; 256], rescale })
}

/// cellpose 4 `eval`'s Euler step count: `niter` if given (and not 0), else `int(200 / rescale)`
/// when the flows are resized back (`resample`), else 200.
pub(crate) fn cp4_niter(requested: Option<u32>, rescale: f64, resample: bool) -> u32 {
    match requested {
        Some(n) if n > 0 => n,
        _ if resample => (200.0 / rescale) as u32,
        _ => 200,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_images_are_padded_to_a_full_tile() {
        // values of cellpose 4 transforms.get_pad_yx(L, L, min_size=(256, 256))
        assert_eq!(cp4_pad(100, 256), (78, 78));
        assert_eq!(cp4_pad(250, 256), (8, 8));
        assert_eq!(cp4_pad(300, 256), (10, 10));
        assert_eq!(cp4_pad(301, 256), (9, 10));
        let (a, b) = cp4_pad(37, 256);
        assert_eq!(37 + a + b, 256);
    }

    #[test]
    fn rescale_and_niter_follow_cellpose4() {
        assert_eq!(cp4_rescale(None), 1.0);
        assert_eq!(cp4_rescale(Some(0.0)), 1.0);
        assert_eq!(cp4_rescale(Some(15.0)), 2.0);
        assert_eq!(cp4_niter(None, 2.0, true), 100);
        assert_eq!(cp4_niter(None, 2.0, false), 200);
        assert_eq!(cp4_niter(Some(7), 2.0, true), 7);
    }

    fn tiny_model() -> CpsamModel {
        use crate::model::cpsam::BlockShape;
        use crate::model::CpsamConfig;
        let b = BlockShape { dim: 16, heads: 2, mlp_dim: 32, rel_len: (7, 7) };
        let cfg = CpsamConfig { dim: 16, blocks: vec![b, b], grid: (4, 4), neck: 8, ..Default::default() };
        tch::manual_seed(7);
        CpsamModel::new(cfg, Device::Cpu).unwrap()
    }

    #[test]
    fn a_wrong_input_is_an_error_naming_the_tensor_not_a_panic() {
        let model = tiny_model();
        let opts = Cp4Options::default();
        let flat = Tensor::zeros([40, 50], (Kind::Float, Device::Cpu));
        assert!(
            matches!(run_net_cp4(&model, &flat, None, &opts), Err(Cp4NetError::NotAnImage(s)) if s == [40, 50])
        );
        // five channels: the patch embedding has three
        let five = Tensor::zeros([5, 40, 50], (Kind::Float, Device::Cpu));
        let err = run_net_cp4(&model, &five, None, &opts).expect_err("five channels");
        let msg = err.to_string();
        assert!(matches!(&err, Cp4NetError::Torch { tensor: "batch", shape, .. } if shape[1] == 5), "{msg}");
        assert!(msg.contains("in the network") && msg.contains("1..=3"), "{msg}");
    }

    #[test]
    fn bf16_weights_give_the_fp32_maps_within_bf16_precision() {
        // the CUDA default (Precision::Auto); bf16 runs on the CPU too, so its dtype handling is
        // checked here: input cast to the weights' kind, float32 maps out
        let mut model = tiny_model();
        let raw = Array3::from_shape_fn((2, 40, 50), |(c, y, x)| ((y * 3 + x * 7 + c) % 23) as f32);
        let opts = Cp4Options { diameter: Some(20.0), ..Default::default() };
        let fp32 = predict_cp4(&model, &raw, &opts).unwrap();
        model.to_kind(Precision::Bf16.kind_on(Device::Cpu));
        assert_eq!(model.net.kind(), Kind::BFloat16);
        let bf16 = predict_cp4(&model, &raw, &opts).unwrap();
        assert_eq!(bf16.dp.dim(), fp32.dp.dim());
        let scale = fp32.dp.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = fp32.dp.iter().zip(bf16.dp.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // bf16 keeps 8 bits of mantissa: ~0.4% per rounding, a few percent after two blocks
        assert!(diff / scale < 0.05, "bf16 vs fp32: max diff {diff} of {scale}");
        assert!(diff > 0.0, "bf16 should round somewhere");
    }

    #[test]
    fn precision_auto_is_bf16_only_on_cuda() {
        assert_eq!(Precision::Auto.kind_on(Device::Cpu), Kind::Float);
        assert_eq!(Precision::Auto.kind_on(Device::Cuda(0)), Kind::BFloat16);
    }
}
