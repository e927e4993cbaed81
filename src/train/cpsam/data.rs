//! Training data the way cellpose 4.2.1.1 `train_seg` prepares it (`_process_train_test`,
//! `_reshape_norm`, `dynamics.labels_to_flows`), where it differs from cellpose 3.1.1.2's
//! ([`crate::train::prepare`]):
//! - channels: no `channels=[c1, c2]`; at most the first three channels are kept and fewer are
//!   zero-padded to three;
//! - normalisation: 1-99 percentiles per channel as before, but a channel that was not
//!   normalised (constant) is set to 0 ("the transformer can get confused if a channel is all
//!   1's");
//! - flows: always the torch algorithm (`masks_to_flows_gpu`, on the CPU when there is no GPU)
//!   with cellpose 4's mask centres ([`crate::train::flows_torch::masks_to_flows_torch_cp4`]).
//!
//! Diameters (median, floored at 5) and the `min_train_masks` filter are unchanged.

use std::path::PathBuf;

use ndarray::{s, Array2, Array3, Axis};
use rayon::prelude::*;
use tch::Device;

use crate::train::data::{keep_trainable, DataError, Example, Prepared, RawExample};
use crate::train::diameters::{diameters, train_diameter};
use crate::train::flows_torch::masks_to_flows_torch_cp4;
use crate::transforms::{normalize_img, Normalize};

/// Why cellpose 4 training data could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum Cp4DataError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{image}: computing the flow targets failed in libtorch ({detail}); the label image may be too large for memory")]
    Flows { image: PathBuf, detail: String },
}

/// cellpose 4 feeds the network exactly three channels.
pub(crate) const CP4_CHANNELS: usize = 3;

/// How raw examples become cellpose 4 training examples.
#[derive(Debug, Clone)]
pub struct Cp4PrepareOptions {
    pub normalize: Normalize,
    /// Images with fewer masks are dropped (cellpose `min_train_masks`: 5 in `train_seg` and its
    /// CLI; NimbusImage's Cellpose-SAM worker passes 1).
    pub min_train_masks: usize,
}

impl Default for Cp4PrepareOptions {
    fn default() -> Self {
        Cp4PrepareOptions { normalize: Normalize::default(), min_train_masks: 5 }
    }
}

/// `_reshape_norm` for a `[C, H, W]` image: first three channels, zero-padded to three, then
/// cellpose 4 `normalize_img` (channels it could not normalise become 0).
pub fn reshape_norm_cp4(image: &Array3<f32>, opts: &Normalize) -> Array3<f32> {
    let (c, h, w) = image.dim();
    let keep = c.min(CP4_CHANNELS);
    let mut out = Array3::<f32>::zeros((CP4_CHANNELS, h, w));
    out.slice_mut(s![..keep, .., ..]).assign(&image.slice(s![..keep, .., ..]));
    if !opts.normalize && opts.lowhigh.is_none() {
        // train_seg(normalize=False) never calls normalize_img
        return out;
    }
    let constant: Vec<bool> = out
        .axis_iter(Axis(0))
        .map(|ch| {
            let (lo, hi) =
                ch.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            hi - lo <= 0.0
        })
        .collect();
    normalize_img(&mut out, opts);
    if opts.lowhigh.is_none() {
        for (mut ch, &flat) in out.axis_iter_mut(Axis(0)).zip(&constant) {
            if flat {
                ch.fill(0.0);
            }
        }
    }
    out
}

/// `labels_to_flows` of cellpose 4 for one label image: `[3, H, W]` = cellprob (labels > 0),
/// dY, dX, and the labels renumbered 1.. in order of first appearance (`fastremap.renumber`).
pub fn flows_cp4(labels: &Array2<u32>) -> Result<(Array3<f32>, Array2<u32>), tch::TchError> {
    let mut relabelled = labels.clone();
    crate::segment::labels::renumber_in_place(&mut relabelled);
    let (h, w) = relabelled.dim();
    let mu = masks_to_flows_torch_cp4(relabelled.view(), None, Device::Cpu)?;
    let mut flows = Array3::<f32>::zeros((3, h, w));
    flows.index_axis_mut(Axis(0), 0).assign(&relabelled.mapv(|v| if v > 0 { 1.0 } else { 0.0 }));
    flows.slice_mut(s![1.., .., ..]).assign(&mu.mapv(|v| v as f32));
    Ok((flows, relabelled))
}

/// Prepares examples in parallel like cellpose 4 `train_seg` (see the module docs).
pub fn prepare_cp4(raw: Vec<RawExample>, opts: &Cp4PrepareOptions) -> Result<Prepared, Cp4DataError> {
    let all: Vec<Example> = raw
        .into_par_iter()
        .map(|r| {
            let image = reshape_norm_cp4(&r.image, &opts.normalize);
            let (flows, relabelled) = flows_cp4(&r.labels)
                .map_err(|e| Cp4DataError::Flows { image: PathBuf::from(&r.name), detail: e.to_string() })?;
            let d = diameters(relabelled.view());
            let diameter = train_diameter(d.median);
            Ok(Example { name: r.name, image, flows, diameter, nmasks: d.per_mask.len(), labels: r.labels })
        })
        .collect::<Result<_, Cp4DataError>>()?;
    Ok(keep_trainable(all, opts.min_train_masks)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_channel_is_padded_to_three_zero_channels() {
        let img = Array3::from_shape_fn((1, 8, 8), |(_, y, x)| (y * 8 + x) as f32);
        let out = reshape_norm_cp4(&img, &Normalize::default());
        assert_eq!(out.dim(), (3, 8, 8));
        assert!(out.slice(s![1.., .., ..]).iter().all(|&v| v == 0.0));
        assert!(out[[0, 7, 7]] > 0.9);
    }

    #[test]
    fn constant_channels_become_zero_and_extra_channels_are_dropped() {
        let mut img = Array3::<f32>::from_elem((4, 6, 6), 7.0);
        img[[1, 2, 2]] = 9.0;
        let out = reshape_norm_cp4(&img, &Normalize::default());
        assert_eq!(out.dim(), (3, 6, 6));
        assert!(out.index_axis(Axis(0), 0).iter().all(|&v| v == 0.0));
        assert!(out.index_axis(Axis(0), 1).iter().any(|&v| v != 0.0));
    }

    #[test]
    fn flows_are_unit_inside_masks_and_labels_renumbered() {
        let mut labels = Array2::<u32>::zeros((12, 12));
        labels.slice_mut(s![2..7, 2..7]).fill(9);
        labels.slice_mut(s![8..11, 5..10]).fill(4);
        let (flows, relabelled) = flows_cp4(&labels).unwrap();
        assert_eq!(relabelled[[3, 3]], 1);
        assert_eq!(relabelled[[9, 6]], 2);
        assert_eq!(flows[[0, 3, 3]], 1.0);
        assert_eq!(flows[[0, 0, 0]], 0.0);
        let n = (flows[[1, 2, 3]].powi(2) + flows[[2, 2, 3]].powi(2)).sqrt();
        assert!((n - 1.0).abs() < 1e-5, "{n}");
    }
}
