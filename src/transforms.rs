//! Image preprocessing as cellpose does it (`cellpose.transforms`): channel selection
//! (`reshape` / `convert_image`), 1-99 percentile normalisation per channel (`normalize99`,
//! `normalize_img`), and bilinear resizing with OpenCV `INTER_LINEAR` semantics.

use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, Axis};
use tch::{Kind, Tensor};

/// Which input channels feed the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Channels {
    /// cellpose's `[chan, chan2]`: chan 0 = mean of all channels (grey), 1.. = that channel
    /// (1-based); chan2 0 = none (a zero channel), 1.. = the nuclear channel. Always 2 outputs.
    Pair { chan: usize, chan2: usize },
    /// cellpose's `channels=None`: the first `nchan` channels as they are, zero-padded.
    All { nchan: usize },
}

impl Channels {
    /// Number of network input channels this selection produces.
    pub fn nchan(&self) -> usize {
        match self {
            Channels::Pair { .. } => 2,
            Channels::All { nchan } => *nchan,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("--chan {chan} asks for channel {chan} but the image has {nchan} channel(s) (channels are 1-based; 0 = grey)")]
    ChanOutOfRange { chan: usize, nchan: usize },
    #[error("--chan2 {chan2} asks for channel {chan2} but the image has {nchan} channel(s) (0 = no nuclear channel)")]
    Chan2OutOfRange { chan2: usize, nchan: usize },
    #[error("image is empty ({0}x{1})")]
    Empty(usize, usize),
    #[error(
        "the network failed in libtorch ({0}); if it ran out of memory, use a smaller image or --diameter"
    )]
    Torch(String),
    #[error(transparent)]
    Cpsam(#[from] crate::predict_cpsam::Cp4NetError),
    /// As `train` refuses such an image: NaN would flow through normalisation and the network
    /// and come out as no masks at all, without a word.
    #[error(
        "{count} pixel values are NaN or infinite; fix or remove the image (the network would give NaN flows and no masks)"
    )]
    NonFinite { count: usize },
    #[error("{0}")]
    Rescale(String),
}

/// Selects/merges channels of a `[C, H, W]` image into the network's input channels
/// (cellpose `transforms.reshape`).
pub(crate) fn convert_channels(
    img: ArrayView3<f32>,
    channels: Channels,
) -> Result<Array3<f32>, TransformError> {
    let (c, h, w) = img.dim();
    if h == 0 || w == 0 {
        return Err(TransformError::Empty(h, w));
    }
    let count = img.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(TransformError::NonFinite { count });
    }
    match channels {
        Channels::All { nchan } => {
            let mut out = Array3::zeros((nchan, h, w));
            let n = c.min(nchan);
            out.slice_mut(s![..n, .., ..]).assign(&img.slice(s![..n, .., ..]));
            Ok(out)
        }
        Channels::Pair { chan, chan2 } => {
            let mut out = Array3::zeros((2, h, w));
            if c == 1 {
                // a single-channel image is used as is, whatever was asked (cellpose does the same)
                out.index_axis_mut(Axis(0), 0).assign(&img.index_axis(Axis(0), 0));
                return Ok(out);
            }
            if chan == 0 {
                out.index_axis_mut(Axis(0), 0)
                    .assign(&img.mean_axis(Axis(0)).unwrap_or_else(|| Array2::zeros((h, w))));
                return Ok(out);
            }
            if chan > c {
                return Err(TransformError::ChanOutOfRange { chan, nchan: c });
            }
            out.index_axis_mut(Axis(0), 0).assign(&img.index_axis(Axis(0), chan - 1));
            if chan2 > 0 {
                if chan2 > c {
                    return Err(TransformError::Chan2OutOfRange { chan2, nchan: c });
                }
                out.index_axis_mut(Axis(0), 1).assign(&img.index_axis(Axis(0), chan2 - 1));
            }
            Ok(out)
        }
    }
}

/// Normalisation options (cellpose's `normalize` dict, the cheap parts).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    /// false = feed raw intensities.
    pub normalize: bool,
    /// Percentiles mapped to 0 and 1.
    pub percentile: (f64, f64),
    /// Fixed intensities mapped to 0 and 1 instead of percentiles.
    pub lowhigh: Option<(f64, f64)>,
    /// 1 - x after normalising (dark cells on bright background).
    pub invert: bool,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize { normalize: true, percentile: (1.0, 99.0), lowhigh: None, invert: false }
    }
}

/// numpy's default ('linear') percentile of `values` (which it reorders).
pub fn percentile(values: &mut [f32], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let idx = q / 100.0 * (n as f64 - 1.0);
    let lo = idx.floor() as usize;
    let t = idx - lo as f64;
    let (_, a, rest) = values.select_nth_unstable_by(lo, f32::total_cmp);
    let a = *a as f64;
    if lo + 1 >= n || t == 0.0 {
        return a;
    }
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    // numpy `_lerp`: symmetric form for t >= 0.5 keeps the result inside [a, b]
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// cellpose `normalize99` on one channel (with `downsample=True`: images above 224^3 pixels use a
/// strided subsample for the percentiles).
pub(crate) fn normalize99(ch: ArrayView2<f32>, lower: f64, upper: f64) -> Array2<f32> {
    let (h, w) = ch.dim();
    let sample: Vec<f32> = if h * w > 224 * 224 * 224 {
        let (sy, sx) = ((h / 224).max(1), (w / 224).max(1));
        ch.slice(s![..;sy, ..;sx]).iter().copied().collect()
    } else {
        ch.iter().copied().collect()
    };
    let mut sample = sample;
    let x01 = percentile(&mut sample, lower) as f32;
    let x99 = percentile(&mut sample, upper) as f32;
    if x99 - x01 > 1e-3 {
        ch.mapv(|v| (v - x01) / (x99 - x01))
    } else {
        Array2::zeros((h, w))
    }
}

/// cellpose `normalize_img` for a `[C, H, W]` image: per channel, constant channels untouched.
pub fn normalize_img(img: &mut Array3<f32>, opts: &Normalize) {
    for mut ch in img.axis_iter_mut(Axis(0)) {
        let mut good = false;
        if let Some((lo, hi)) = opts.lowhigh {
            ch.mapv_inplace(|v| ((v as f64 - lo) / (hi - lo)) as f32);
            good = true;
        } else if opts.normalize {
            let (min, max) =
                ch.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            if max - min > 0.0 {
                let n = normalize99(ch.view(), opts.percentile.0, opts.percentile.1);
                ch.assign(&n);
                good = true;
            }
        }
        if opts.invert && good {
            ch.mapv_inplace(|v| 1.0 - v);
        }
    }
}

/// Bilinear resize of `[N, C, H, W]` (or `[C, H, W]`) with OpenCV `INTER_LINEAR` / PyTorch
/// `align_corners=False` semantics (half-pixel centres, no antialiasing), as cellpose's
/// `cv2.resize` calls do; libtorch's failures (out of memory) are returned.
pub(crate) fn f_resize_bilinear(x: &Tensor, out_h: i64, out_w: i64) -> Result<Tensor, tch::TchError> {
    let squeeze = x.dim() == 3;
    let x4 = if squeeze { x.f_unsqueeze(0)? } else { x.shallow_clone() };
    let size = x4.size();
    if size.get(2..4) == Some(&[out_h, out_w][..]) {
        return Ok(x.shallow_clone());
    }
    let kind = x4.kind();
    let y = x4
        .f_to_kind(Kind::Float)?
        .f_upsample_bilinear2d([out_h, out_w], false, None, None)?
        .f_to_kind(kind)?;
    if squeeze {
        y.f_squeeze_dim(0)
    } else {
        Ok(y)
    }
}

/// The size a `ly x lx` image has at resize factor `rsz`: `int(L * rsz)` per axis, as cellpose's
/// `core.run_net` computes it (both families); `None` keeps the size.
pub(crate) fn rescaled_size(ly: i64, lx: i64, rsz: Option<f64>) -> (i64, i64) {
    match rsz {
        Some(r) => ((ly as f64 * r) as i64, (lx as f64 * r) as i64),
        None => (ly, lx),
    }
}

/// cellpose `core.run_net`'s first step for a `[C, H, W]` image: resized by `rsz` to
/// [`rescaled_size`] (the same tensor when that is its size). Returns the image and its size.
pub(crate) fn resize_by(img: &Tensor, rsz: Option<f64>) -> Result<(Tensor, i64, i64), tch::TchError> {
    let size = img.size();
    let [_, ly0, lx0] = size[..] else {
        return Err(tch::TchError::Shape(format!("expected a [C, H, W] image, got {size:?}")));
    };
    let (ly, lx) = rescaled_size(ly0, lx0, rsz);
    let out = if (ly, lx) != (ly0, lx0) { f_resize_bilinear(img, ly, lx)? } else { img.shallow_clone() };
    Ok((out, ly, lx))
}

/// `[C, H, W]` ndarray -> CPU tensor (the training side's prepared examples).
pub fn array3_to_tensor(a: &Array3<f32>) -> Tensor {
    let (c, h, w) = a.dim();
    let data: Vec<f32> = a.iter().copied().collect();
    Tensor::from_slice(&data).view([c as i64, h as i64, w as i64])
}

/// [`array3_to_tensor`] with libtorch's failures returned: for images whose size comes from a
/// user's file (prediction).
pub(crate) fn f_array3_to_tensor(a: &Array3<f32>) -> Result<Tensor, tch::TchError> {
    let (c, h, w) = a.dim();
    let data: Vec<f32> = a.iter().copied().collect();
    Tensor::f_from_slice(&data)?.f_view([c as i64, h as i64, w as i64])
}

/// CPU/GPU tensor `[C, H, W]` -> ndarray; a tensor of another rank is an error.
pub(crate) fn tensor_to_array3(t: &Tensor) -> Result<Array3<f32>, tch::TchError> {
    let t = t.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
    let size = t.size();
    let [c, h, w] = size[..] else {
        return Err(tch::TchError::Shape(format!("expected [C, H, W] maps, got {size:?}")));
    };
    let n = t.numel();
    let mut data = vec![0f32; n];
    t.f_copy_data(&mut data, n)?;
    Array3::from_shape_vec((c as usize, h as usize, w as usize), data)
        .map_err(|e| tch::TchError::Shape(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn percentile_matches_numpy_linear() {
        // np.percentile([1, 2, 3, 4, 10], [1, 50, 99]) == [1.04, 3.0, 9.76]
        let mut v = vec![10.0f32, 2.0, 4.0, 1.0, 3.0];
        assert!((percentile(&mut v, 1.0) - 1.04).abs() < 1e-9);
        assert!((percentile(&mut v, 50.0) - 3.0).abs() < 1e-9);
        assert!((percentile(&mut v, 99.0) - 9.76).abs() < 1e-6);
    }

    #[test]
    fn pair_channels_select_one_based_and_zero_fill() {
        let img = Array3::from_shape_fn((3, 2, 2), |(c, _, _)| c as f32 + 1.0);
        let out = convert_channels(img.view(), Channels::Pair { chan: 2, chan2: 0 }).unwrap();
        assert_eq!(out.index_axis(Axis(0), 0), array![[2.0, 2.0], [2.0, 2.0]]);
        assert_eq!(out.index_axis(Axis(0), 1), array![[0.0, 0.0], [0.0, 0.0]]);
        let grey = convert_channels(img.view(), Channels::Pair { chan: 0, chan2: 0 }).unwrap();
        assert_eq!(grey[[0, 1, 1]], 2.0);
        assert!(matches!(
            convert_channels(img.view(), Channels::Pair { chan: 4, chan2: 0 }),
            Err(TransformError::ChanOutOfRange { chan: 4, nchan: 3 })
        ));
    }

    #[test]
    fn resize_by_truncates_like_run_net_and_keeps_the_tensor_at_scale_one() {
        assert_eq!(rescaled_size(300, 410, Some(1.5)), (450, 615));
        assert_eq!(rescaled_size(101, 33, Some(0.5)), (50, 16));
        assert_eq!(rescaled_size(7, 9, None), (7, 9));
        let img = Tensor::ones([2, 10, 12], (Kind::Float, tch::Device::Cpu));
        let (same, h, w) = resize_by(&img, None).unwrap();
        assert_eq!((h, w), (10, 12));
        assert!(same.allclose(&img, 0.0, 0.0, false));
        let (half, h, w) = resize_by(&img, Some(0.55)).unwrap();
        assert_eq!((half.size(), h, w), (vec![2, 5, 6], 5, 6));
        assert!(resize_by(&Tensor::ones([10, 12], (Kind::Float, tch::Device::Cpu)), None).is_err());
    }

    #[test]
    fn constant_channel_is_left_untouched() {
        let mut img = Array3::from_elem((1, 3, 3), 5.0f32);
        normalize_img(&mut img, &Normalize::default());
        assert!(img.iter().all(|&v| v == 5.0));
    }
}
