//! Network inference as cellpose's `CellposeModel.eval(..., compute_masks=False)`: channel
//! selection, percentile normalisation, resize by diam_mean/diameter, padding to a multiple of 16,
//! overlapping 224x224 tiles run in batches, tiles blended with cellpose's taper mask
//! (`transforms.average_tiles`), and the maps resized back to the image (`resample=True`).

use ndarray::{Array2, Array3};
use tch::{Device, Kind, Tensor};

use crate::model::Model;
use crate::transforms::{self, Channels, Normalize};

/// Tiling and batching (cellpose `run_net` arguments).
#[derive(Debug, Clone, Copy)]
pub struct TileConfig {
    pub bsize: i64,
    pub tile_overlap: f64,
    pub batch_size: i64,
}

impl Default for TileConfig {
    fn default() -> Self {
        TileConfig { bsize: 224, tile_overlap: 0.1, batch_size: 8 }
    }
}

/// Everything that decides what the network sees.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    pub channels: Channels,
    pub normalize: Normalize,
    /// Object diameter in pixels; `None` or 0 rescales by diam_mean / diam_labels as cellpose does.
    pub diameter: Option<f64>,
    pub tiles: TileConfig,
    /// Resize the maps back to the image size (cellpose `resample=True`).
    pub resample: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            channels: Channels::Pair { chan: 0, chan2: 0 },
            normalize: Normalize::default(),
            diameter: None,
            tiles: TileConfig::default(),
            resample: true,
        }
    }
}

/// Network output for one image.
pub struct Prediction {
    /// `[2, H, W]`: dY, dX (network scale: 5x unit flows).
    pub dp: Array3<f32>,
    /// `[H, W]`: cell probability logits.
    pub cellprob: Array2<f32>,
    /// Style vector, L2-normalised over tiles.
    pub style: Vec<f32>,
    /// The resize factor the network ran at.
    pub rescale: f64,
}

/// The resize factor cellpose uses: diam_mean / diameter, else diam_mean / diam_labels.
pub(crate) fn rescale_for(diam_mean: f64, diam_labels: f64, diameter: Option<f64>) -> f64 {
    match diameter {
        Some(d) if d > 0.0 => diam_mean / d,
        _ if diam_labels > 0.0 => diam_mean / diam_labels,
        _ => 1.0,
    }
}

/// cellpose `transforms.get_pad_yx(Ly, Lx, div=16, extra=1)`: (ypad1, ypad2, xpad1, xpad2).
pub(crate) fn pad_yx(ly: i64, lx: i64) -> (i64, i64, i64, i64) {
    let pad = |l: i64| {
        let lpad = (l + 15) / 16 * 16 - l;
        (8 + lpad / 2, 8 + lpad - lpad / 2)
    };
    let (y1, y2) = pad(ly);
    let (x1, x2) = pad(lx);
    (y1, y2, x1, x2)
}

/// Tile start offsets along one axis (cellpose `make_tiles`, augment=False).
pub(crate) fn tile_starts(len: i64, bsize: i64, overlap: f64) -> Vec<i64> {
    let overlap = overlap.clamp(0.05, 0.5);
    let b = bsize.min(len);
    let n = if len <= bsize { 1 } else { ((1.0 + 2.0 * overlap) * len as f64 / bsize as f64).ceil() as i64 };
    // np.linspace(0, len - b, n).astype(int)
    (0..n).map(|i| if n == 1 { 0 } else { ((len - b) as f64 * i as f64 / (n - 1) as f64) as i64 }).collect()
}

/// cellpose `_taper_mask(ly, lx, sig=7.5)`: a soft window that down-weights tile borders.
pub(crate) fn taper_mask(ly: i64, lx: i64) -> Result<Tensor, tch::TchError> {
    let bsize = 224.max(ly.max(lx));
    let mean = (bsize - 1) as f64 / 2.0;
    let m: Vec<f64> = (0..bsize)
        .map(|i| {
            let x = (i as f64 - mean).abs();
            1.0 / (1.0 + ((x - (bsize as f64 / 2.0 - 20.0)) / 7.5).exp())
        })
        .collect();
    let v = Tensor::from_slice(&m);
    let full = v.f_unsqueeze(1)?.f_mul(&v.f_unsqueeze(0)?)?;
    let y0 = bsize / 2 - ly / 2;
    let x0 = bsize / 2 - lx / 2;
    full.f_narrow(0, y0, ly)?.f_narrow(1, x0, lx)?.f_to_kind(Kind::Float)
}

/// Runs the network over a normalised `[C, H, W]` CPU tensor at `rsz` and returns
/// (`[nout, Ly*rsz, Lx*rsz]` maps on CPU, style). This is cellpose `core.run_net` for one image.
pub fn run_net(
    model: &Model,
    img: &Tensor,
    rsz: Option<f64>,
    tiles: &TileConfig,
    device: Device,
) -> Result<(Tensor, Tensor), tch::TchError> {
    let net = &model.net;
    let (img, lyr, lxr) = transforms::resize_by(img, rsz)?;
    let (y1, y2, x1, x2) = pad_yx(lyr, lxr);
    let padded = img.f_constant_pad_nd([x1, x2, y1, y2])?;
    let (ly, lx) = (lyr + y1 + y2, lxr + x1 + x2);
    let bs = tiles.bsize;
    let (by, bx) = (bs.min(ly), bs.min(lx));
    let ys = tile_starts(ly, bs, tiles.tile_overlap);
    let xs = tile_starts(lx, bs, tiles.tile_overlap);
    let mut coords = Vec::new();
    for &y in &ys {
        for &x in &xs {
            coords.push((y, x));
        }
    }
    let nout = net.config.nout;
    let mask = taper_mask(by, bx)?;
    // every op below is a fallible `f_` one: the buffers are sized by the image (checked against
    // crate::limits before), and an allocation libtorch still cannot make is an error
    let mut acc = Tensor::f_zeros([nout, ly, lx], (Kind::Float, Device::Cpu))?;
    let navg = Tensor::f_zeros([ly, lx], (Kind::Float, Device::Cpu))?;
    let mut style_sum = Tensor::f_zeros([net.config.style_channels()], (Kind::Float, Device::Cpu))?;
    tch::no_grad(|| -> Result<(), tch::TchError> {
        for chunk in coords.chunks(tiles.batch_size.max(1) as usize) {
            let tiles: Vec<Tensor> = chunk
                .iter()
                .map(|&(y, x)| padded.f_narrow(1, y, by)?.f_narrow(2, x, bx))
                .collect::<Result<_, _>>()?;
            let batch = Tensor::f_stack(&tiles, 0)?.f_to_device(device)?;
            let out = net.forward_t(&batch, false)?;
            let maps = out.maps.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
            let styles = out.style.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
            let _ = style_sum.f_add_(&styles.f_sum_dim_intlist([0i64].as_slice(), false, None)?)?;
            for (i, &(y, x)) in chunk.iter().enumerate() {
                let mut dst = acc.f_narrow(1, y, by)?.f_narrow(2, x, bx)?;
                let _ = dst.f_add_(&maps.f_get(i as i64)?.f_mul(&mask)?)?;
                let mut n = navg.f_narrow(0, y, by)?.f_narrow(1, x, bx)?;
                let _ = n.f_add_(&mask)?;
            }
        }
        Ok(())
    })?;
    let _ = acc.f_div_(&navg)?;
    let yf = acc.f_narrow(1, y1, lyr)?.f_narrow(2, x1, lxr)?;
    let style = style_sum.f_div(&style_sum.f_square()?.f_sum(Kind::Float)?.f_sqrt()?)?;
    Ok((yf, style))
}

/// Preprocesses a raw `[C, H, W]` image and runs the network: cellpose
/// `CellposeModel.eval(x, channels, diameter, compute_masks=False)` for one 2-D image.
/// `diam_mean` is the model's effective diam_mean (built-ins use cellpose's fixed values).
pub fn predict(
    model: &Model,
    diam_mean: f64,
    raw: &Array3<f32>,
    opts: &PredictOptions,
    device: Device,
) -> Result<Prediction, transforms::TransformError> {
    let mut x = transforms::convert_channels(raw.view(), opts.channels)?;
    transforms::normalize_img(&mut x, &opts.normalize);
    let (c, h, w) = x.dim();
    let rescale = rescale_for(diam_mean, model.net.diam_labels(), opts.diameter);
    // the factor comes from a flag or from the model file: checked before the resize allocates
    let cause = match opts.diameter {
        Some(d) if d > 0.0 => format!("diam_mean {diam_mean} / --diameter {d}"),
        // stored as float32: shown as such (1e-4, not 0.00009999999747)
        _ => format!(
            "the model's diam_mean {} / diam_labels {}",
            diam_mean as f32,
            model.net.diam_labels() as f32
        ),
    };
    crate::limits::rescaled_image(h, w, c, rescale, &cause).map_err(transforms::TransformError::Rescale)?;
    let torch = |e: tch::TchError| {
        transforms::TransformError::Torch(e.to_string().lines().next().unwrap_or("").trim().to_string())
    };
    let t = transforms::f_array3_to_tensor(&x).map_err(torch)?;
    let rsz = (rescale != 1.0).then_some(rescale);
    let (mut yf, style) = run_net(model, &t, rsz, &opts.tiles, device).map_err(torch)?;
    if opts.resample && rsz.is_some() {
        yf = transforms::f_resize_bilinear(&yf, h as i64, w as i64).map_err(torch)?;
    }
    let maps = transforms::tensor_to_array3(&yf).map_err(torch)?;
    let dp = maps.slice(ndarray::s![0..2, .., ..]).to_owned();
    let cellprob = maps.index_axis(ndarray::Axis(0), 2).to_owned();
    let style_len = style.numel();
    let mut sv = vec![0f32; style_len];
    style.f_copy_data(&mut sv, style_len).map_err(torch)?;
    Ok(Prediction { dp, cellprob, style: sv, rescale })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_matches_cellpose_get_pad_yx() {
        // values printed by cellpose.transforms.get_pad_yx
        assert_eq!(pad_yx(100, 224), (14, 14, 8, 8));
        assert_eq!(pad_yx(33, 17), (15, 16, 15, 16));
    }

    #[test]
    fn tiles_cover_the_image_like_make_tiles() {
        // Ly=500, bsize 224, overlap 0.1: ny = ceil(1.2*500/224) = 3 -> linspace(0, 276, 3)
        assert_eq!(tile_starts(500, 224, 0.1), vec![0, 138, 276]);
        assert_eq!(tile_starts(100, 224, 0.1), vec![0]);
    }

    #[test]
    fn taper_mask_is_one_in_the_middle_and_small_at_edges() {
        let m = taper_mask(224, 224).unwrap();
        assert!((m.double_value(&[112, 112]) - 1.0).abs() < 1e-3);
        assert!(m.double_value(&[0, 0]) < 0.1);
    }
}
