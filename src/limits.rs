//! The stated limits on everything a user, a file or a server can size: epochs, images per
//! epoch, batches, network widths, object diameters, image sizes (TIFF headers, Girder tile
//! metadata, a rescale before the network).
//!
//! Why: an absurd number must be refused with its option's name before anything is allocated,
//! not abort the process with `memory allocation of N bytes failed` (Rust aborts on a failed
//! allocation) or panic inside libtorch. Each limit sits far above any real use (cellpose's
//! defaults in brackets) and far below what would exhaust a worker's memory. The CLI, the job
//! intake and both trainers call these checks; each error names the option as the caller spells
//! it (`--n-epochs`, `Epochs`, ...).

/// A value outside its limit: the option as the caller names it, the value, and the limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{option} {value}: {reason}")]
pub struct LimitError {
    pub option: String,
    pub value: String,
    pub reason: String,
}

fn refuse(option: &str, value: impl std::fmt::Display, reason: String) -> LimitError {
    LimitError { option: option.to_string(), value: value.to_string(), reason }
}

/// Most epochs of one run (cellpose: 500 for CPnet, 100 for cpsam). The trainer keeps a few
/// numbers per epoch (loss, test loss, LR, seconds), so 100,000 epochs cost a few MB.
pub const MAX_EPOCHS: usize = 100_000;

/// Most images drawn per epoch (cellpose: the training set's size). The epoch's draw order is
/// held as one list.
pub const MAX_IMAGES_PER_EPOCH: usize = 1_000_000;

/// Most pixels in one training batch, `batch size x bsize²` (cellpose: 8 x 224² = 401,408; a
/// Cellpose-SAM batch: 1 x 256²). Every channel and flow map of the batch is allocated at once on
/// the host and the device; 2^26 pixels is e.g. 1,337 patches of 224² or 64 of 1024².
pub const MAX_BATCH_PIXELS: u64 = 1 << 26;

/// Most weights of a CPnet built from `--nbase` (cyto3: 6.6 M). 250 M float32 weights are 1 GB
/// before the optimizer's state, which doubles or triples it.
pub const MAX_CPNET_PARAMETERS: u64 = 250_000_000;

/// Most levels of a CPnet (cellpose: 4, `--nbase 32,64,128,256`): each level halves the image.
pub const MAX_CPNET_LEVELS: usize = 8;

/// Most input channels of a network built here (cellpose: 2; Cellpose-SAM: 3).
pub const MAX_CHANNELS: usize = 64;

/// Smallest object diameter stored in a model or used for training, in pixels: cellpose's floor
/// for the diameter of training labels (`diam_train` below 5 becomes 5).
pub const MIN_DIAMETER: f64 = 5.0;

/// Largest object diameter stored in a model or used for training, in pixels: above the diameter
/// of one object filling the largest image read ([`MAX_IMAGE_SAMPLES`]: 16384² pixels, a
/// diameter of 18,487), so a diameter measured on real labels always passes.
pub const MAX_DIAMETER: f64 = 20_000.0;

/// Most samples (pixels x channels) of one image read from a file or a server, or of an image
/// after its rescale before the network: 2^28 samples, 1 GiB as float32 (e.g. 16384 x 16384 x 1,
/// or 11585 x 11585 x 2). Everything downstream (normalisation, flows, tiles) is a few copies of
/// it.
pub const MAX_IMAGE_SAMPLES: u64 = 1 << 28;

/// Most pages of a TIFF read as channels of one image.
pub const MAX_TIFF_PAGES: usize = 1024;

/// Largest side of a frame in Girder's tile metadata (`sizeX`, `sizeY`): large_image serves
/// whole-slide images up to about 200,000 pixels a side; a larger claim is not an image.
pub const MAX_FRAME_SIDE: u64 = 1 << 20;

/// Most frames in Girder's tile metadata.
pub const MAX_FRAMES: usize = 1 << 20;

/// `--n-epochs` / `Epochs`: at least 1, at most [`MAX_EPOCHS`].
pub fn epochs(option: &str, n: usize) -> Result<(), LimitError> {
    if n == 0 {
        return Err(refuse(option, n, "must be at least 1".into()));
    }
    if n > MAX_EPOCHS {
        return Err(refuse(option, n, format!("is above the limit of {MAX_EPOCHS} epochs")));
    }
    Ok(())
}

/// `--nimg-per-epoch` / `--nimg-test-per-epoch`: at least 1 (0 would make every epoch's mean
/// loss 0/0), at most [`MAX_IMAGES_PER_EPOCH`].
pub fn images_per_epoch(option: &str, n: usize) -> Result<(), LimitError> {
    if n == 0 {
        return Err(refuse(
            option,
            n,
            "must be at least 1 image per epoch (leave it unset for the whole set)".into(),
        ));
    }
    if n > MAX_IMAGES_PER_EPOCH {
        return Err(refuse(
            option,
            n,
            format!("is above the limit of {MAX_IMAGES_PER_EPOCH} images per epoch"),
        ));
    }
    Ok(())
}

/// `--batch-size` with patches of `bsize` pixels a side: at most [`MAX_BATCH_PIXELS`] pixels.
pub fn batch(option: &str, batch_size: usize, bsize: usize) -> Result<(), LimitError> {
    let pixels = (batch_size as u128) * (bsize as u128) * (bsize as u128);
    if pixels > MAX_BATCH_PIXELS as u128 {
        return Err(refuse(
            option,
            batch_size,
            format!(
                "with {bsize}x{bsize} patches makes batches of {pixels} pixels; the limit is {MAX_BATCH_PIXELS} \
                 pixels per batch (batch size x patch side²), e.g. {} patches of {bsize}x{bsize}",
                MAX_BATCH_PIXELS as u128 / ((bsize as u128 * bsize as u128).max(1))
            ),
        ));
    }
    Ok(())
}

/// The sizes of a training run, as both trainers' option checks see them: epochs, batch size
/// and patch side, images per epoch (train and test). Named as the trainers' config fields
/// (`n_epochs`, ...), which the CLI flags and worker settings mirror (`--n-epochs`, ...).
pub fn training(
    n_epochs: usize,
    batch_size: usize,
    bsize: usize,
    nimg_per_epoch: Option<usize>,
    nimg_test_per_epoch: Option<usize>,
) -> Result<(), LimitError> {
    epochs("n_epochs (--n-epochs)", n_epochs)?;
    batch("batch_size (--batch-size)", batch_size, bsize)?;
    if let Some(n) = nimg_per_epoch {
        images_per_epoch("nimg_per_epoch (--nimg-per-epoch)", n)?;
    }
    if let Some(n) = nimg_test_per_epoch {
        images_per_epoch("nimg_test_per_epoch (--nimg-test-per-epoch)", n)?;
    }
    Ok(())
}

/// Number of weights of a CPnet with channels `nbase` (input channels first), `nout` outputs
/// and `kernel`-sized convolutions, without building it (cellpose `resnet_torch.CPnet`): each
/// down level is 4 BatchNorm+conv pairs and a 1x1 projection; each up level one BatchNorm+conv,
/// 3 more with a dense layer from the style vector each, and a 1x1 projection; then the output
/// BatchNorm+1x1 conv. `num_batches_tracked` counters are left out. Saturates, never overflows.
pub fn cpnet_parameters(nbase: &[i64], nout: i64, kernel: i64) -> u128 {
    let c = |v: i64| v.max(0) as u128;
    let k2 = c(kernel) * c(kernel);
    // BatchNorm (weight, bias, running mean and var) + conv (weight, bias)
    let bn = |cin: u128| 4 * cin;
    let conv = |cin: u128, cout: u128, k2: u128| cin * cout * k2 + cout;
    let batchconv = |cin: u128, cout: u128, k2: u128| bn(cin) + conv(cin, cout, k2);
    let mut total: u128 = 2; // diam_mean, diam_labels
    let n = nbase.len();
    if n < 2 {
        return total;
    }
    for l in 0..n - 1 {
        let (cin, cout) = (c(nbase[l]), c(nbase[l + 1]));
        total = total.saturating_add(
            batchconv(cin, cout, k2) + 3 * batchconv(cout, cout, k2) + batchconv(cin, cout, 1),
        );
    }
    let mut up: Vec<u128> = nbase[1..].iter().map(|&v| c(v)).collect();
    up.push(*up.last().unwrap_or(&0));
    let style = c(nbase[n - 1]);
    for l in 1..up.len() {
        let (cin, cout) = (up[l], up[l - 1]);
        let styled = batchconv(cout, cout, k2) + cout * style + cout;
        total = total.saturating_add(batchconv(cin, cout, k2) + 3 * styled + batchconv(cin, cout, 1));
    }
    total.saturating_add(batchconv(up[0], c(nout), 1))
}

/// `--nbase` (and the input channels before it): positive widths, at most [`MAX_CPNET_LEVELS`]
/// levels and [`MAX_CPNET_PARAMETERS`] weights.
pub fn cpnet_widths(option: &str, nbase: &[i64], nout: i64, kernel: i64) -> Result<(), LimitError> {
    // the widths as the user gives them; the input channels come from another option or the data
    let shown = nbase.iter().skip(1).map(i64::to_string).collect::<Vec<_>>().join(",");
    if nbase.len() < 2 || nbase.iter().any(|&c| c < 1) {
        return Err(refuse(option, shown, "needs positive channel counts, e.g. 32,64,128,256".into()));
    }
    if nbase[0] as u64 > MAX_CHANNELS as u64 {
        return Err(refuse(
            option,
            shown,
            format!("starts from {} input channels; the limit is {MAX_CHANNELS}", nbase[0]),
        ));
    }
    if nbase.len() - 1 > MAX_CPNET_LEVELS {
        return Err(refuse(
            option,
            shown,
            format!("has {} levels; the limit is {MAX_CPNET_LEVELS} (cellpose uses 4)", nbase.len() - 1),
        ));
    }
    let n = cpnet_parameters(nbase, nout, kernel);
    if n > MAX_CPNET_PARAMETERS as u128 {
        return Err(refuse(
            option,
            shown,
            format!(
                "makes a network of {n} weights with {} input channel(s) ({:.1} GB as float32); the limit is \
                 {MAX_CPNET_PARAMETERS} weights (cellpose's 32,64,128,256 has 6.6 million)",
                nbase[0],
                n as f64 * 4e-9
            ),
        ));
    }
    Ok(())
}

/// An object diameter that is stored in a model (`diam_labels`, `diam_mean`) or trained at:
/// finite, within [[`MIN_DIAMETER`], [`MAX_DIAMETER`]] pixels.
pub fn diameter(option: &str, d: f64) -> Result<(), LimitError> {
    if !(d.is_finite() && (MIN_DIAMETER..=MAX_DIAMETER).contains(&d)) {
        return Err(refuse(
            option,
            d,
            format!(
                "is outside {MIN_DIAMETER}..{MAX_DIAMETER} pixels: an object diameter is stored in the model and \
                 rescales every image by diameter / diam_mean"
            ),
        ));
    }
    Ok(())
}

/// An image of `height x width x channels` read from `what`: at most [`MAX_IMAGE_SAMPLES`]
/// samples. Returns the message naming the size and the limit.
pub fn image_samples(height: u64, width: u64, channels: u64) -> Result<(), String> {
    let n = (height as u128) * (width as u128) * (channels as u128);
    if n > MAX_IMAGE_SAMPLES as u128 {
        return Err(format!(
            "the image is {width}x{height} pixels x {channels} channel(s) = {n} samples ({:.1} GiB as float32); \
             the limit is {MAX_IMAGE_SAMPLES} samples (1 GiB): crop or downsample it",
            n as f64 * 4.0 / (1u64 << 30) as f64
        ));
    }
    Ok(())
}

/// The image of `height x width x channels` after a rescale by `factor` before the network
/// (cellpose: diam_mean / diameter): a finite positive factor and at most [`MAX_IMAGE_SAMPLES`]
/// samples after it. `cause` says where the factor came from, for the message.
pub fn rescaled_image(
    height: usize,
    width: usize,
    channels: usize,
    factor: f64,
    cause: &str,
) -> Result<(), String> {
    if !(factor.is_finite() && factor > 0.0) {
        return Err(format!("the rescale factor {factor} ({cause}) is not a positive number"));
    }
    // cellpose's run_net: int(L * rsz) per axis
    let (h, w) = ((height as f64 * factor).floor(), (width as f64 * factor).floor());
    let n = h * w * channels as f64;
    if h < 1.0 || w < 1.0 {
        return Err(format!(
            "rescaling the {width}x{height} image by {factor:.3e} ({cause}) leaves no pixel"
        ));
    }
    if n > MAX_IMAGE_SAMPLES as f64 {
        return Err(format!(
            "rescaling the {width}x{height} image by {factor:.3} ({cause}) makes it {w}x{h} pixels x {channels} \
             channel(s) = {n:.0} samples; the limit is {MAX_IMAGE_SAMPLES} samples: give a larger --diameter \
             or a smaller image"
        ));
    }
    Ok(())
}

/// A frame size in Girder's tile metadata: positive sides up to [`MAX_FRAME_SIDE`].
pub fn frame_size(width: u64, height: u64) -> Result<(), String> {
    if width == 0 || height == 0 || width > MAX_FRAME_SIDE || height > MAX_FRAME_SIDE {
        return Err(format!(
            "the image's tile metadata claims frames of {width}x{height} pixels; sides must be 1..{MAX_FRAME_SIDE}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_equals_the_built_network() {
        for (nbase, nout) in [(vec![2, 32, 64, 128, 256], 3), (vec![3, 8, 16], 3), (vec![1, 4], 5)] {
            let cfg = crate::model::CpnetConfig { nbase: nbase.clone(), nout, ..Default::default() };
            let model = crate::model::Model::new(cfg, tch::Device::Cpu).expect("small network");
            let built: u128 = model.vs.variables().values().map(|t| t.numel() as u128).sum();
            // num_batches_tracked (one per BatchNorm) is the only tensor the count leaves out
            let bns = model.vs.variables().keys().filter(|k| k.ends_with("num_batches_tracked")).count();
            assert_eq!(cpnet_parameters(&nbase, nout, 3) + bns as u128, built, "{nbase:?}");
        }
    }

    #[test]
    fn widths_of_the_issue_are_refused_with_the_option_and_the_limit() {
        let e = cpnet_widths("--nbase", &[2, 100_000, 200_000], 3, 3).unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("--nbase 100000,200000: makes a network of"), "{m}");
        assert!(m.contains("250000000 weights"), "{m}");
        assert!(cpnet_widths("--nbase", &[2, 32, 64, 128, 256], 3, 3).is_ok());
        assert!(cpnet_widths("--nbase", &[2, 0], 3, 3).is_err());
        assert!(cpnet_widths("--nbase", &[2, 8, 8, 8, 8, 8, 8, 8, 8, 8], 3, 3)
            .unwrap_err()
            .to_string()
            .contains("levels"));
    }

    #[test]
    fn counts_are_checked_at_both_ends() {
        assert!(epochs("--n-epochs", 10_000_000_000).unwrap_err().to_string().contains("100000"));
        assert!(epochs("--n-epochs", 0).is_err());
        assert!(epochs("--n-epochs", 500).is_ok());
        assert!(images_per_epoch("--nimg-per-epoch", 1_000_000_000_000).is_err());
        assert!(images_per_epoch("--nimg-per-epoch", 0).unwrap_err().to_string().contains("at least 1"));
        assert!(batch("--batch-size", 8, 224).is_ok());
        assert!(batch("--batch-size", 100_000, 224).unwrap_err().to_string().contains("67108864"));
    }

    #[test]
    fn diameters_and_rescales_are_bounded() {
        assert!(diameter("--diameter", 30.0).is_ok());
        for bad in [1e30, 1e-4, 0.0, f64::NAN, f64::INFINITY] {
            assert!(diameter("--diameter", bad).is_err(), "{bad}");
        }
        assert!(rescaled_image(512, 512, 2, 1.0, "x").is_ok());
        assert!(rescaled_image(512, 512, 2, 3e5, "diam_labels 1e-4").unwrap_err().contains("--diameter"));
        assert!(rescaled_image(512, 512, 2, 0.0, "x").is_err());
        assert!(image_samples(65536, 65536, 1).unwrap_err().contains("268435456"));
    }
}
