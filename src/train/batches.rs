//! The batch producer: which images each step sees (cellpose's per-epoch permutation or weighted
//! sampling) and their augmented patches, made on a background thread (rayon inside) and handed
//! over through a bounded channel so the next batch is ready before the current step ends.
//!
//! Randomness is derived from (seed, epoch, batch) alone, so a run is reproducible whatever the
//! thread timing, and a resumed run sees exactly the batches the interrupted one would have.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::Tensor;

use super::augment::{augment_into, AugmentParams, Layout, Source};
use super::data::Example;

/// Sampling and augmentation settings shared by train and test batches.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    pub batch_size: usize,
    pub bsize: usize,
    /// Images per epoch; when it differs from the set size, images are drawn with replacement.
    pub per_epoch: usize,
    pub scale_range: f64,
    /// Rescale each image by its diameter / diam_mean (cellpose `rescale=True`).
    pub rescale: bool,
    pub diam_mean: f64,
    pub seed: u64,
    /// Lay images out channels-last (NHWC memory order), the fast layout for cuDNN.
    pub channels_last: bool,
    /// Pin host memory for this CUDA device so transfers can overlap with compute.
    pub pin_for: Option<tch::Device>,
}

/// One batch on the CPU: `x` `[B, C, bsize, bsize]`, `y` `[B, 3, bsize, bsize]`.
pub struct Batch {
    pub epoch: usize,
    pub index: usize,
    pub x: Tensor,
    pub y: Tensor,
}

fn rng_for(seed: u64, stream: u64, epoch: usize, batch: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r.set_word_pos(((epoch as u128) << 40) | ((batch as u128) << 8));
    r
}

/// Image indices for one epoch: a permutation, or `per_epoch` draws with replacement.
pub(crate) fn epoch_order(n: usize, per_epoch: usize, seed: u64, stream: u64, epoch: usize) -> Vec<usize> {
    let mut rng = rng_for(seed, stream, epoch, usize::MAX >> 32);
    if per_epoch == n {
        let mut v: Vec<usize> = (0..n).collect();
        v.shuffle(&mut rng);
        v
    } else {
        (0..per_epoch).map(|_| rng.gen_range(0..n)).collect()
    }
}

/// Builds one batch for the given image indices.
pub(crate) fn make_batch(
    examples: &[Example],
    inds: &[usize],
    plan: &BatchPlan,
    mut rng: ChaCha8Rng,
    epoch: usize,
    index: usize,
) -> Batch {
    let params: Vec<AugmentParams> = inds
        .iter()
        .map(|&i| {
            let e = &examples[i];
            let (_, ly, lx) = e.image.dim();
            let rsc = if plan.rescale { e.diameter / plan.diam_mean } else { 1.0 };
            AugmentParams::draw(&mut rng, ly, lx, plan.bsize, plan.scale_range, rsc)
        })
        .collect();
    let b = inds.len();
    let c = examples[inds[0]].image.dim().0;
    let s = plan.bsize;
    let (x_shape, layout) =
        if plan.channels_last { ([b, s, s, c], Layout::Hwc) } else { ([b, c, s, s], Layout::Chw) };
    let x = host_tensor(&x_shape.map(|d| d as i64), plan.pin_for);
    let y = host_tensor(&[b as i64, 3, s as i64, s as i64], plan.pin_for);
    {
        // SAFETY: both tensors were just allocated here, are contiguous float32 on the CPU and not
        // shared with anything yet; each thread writes a disjoint chunk.
        let xs = unsafe { std::slice::from_raw_parts_mut(x.data_ptr() as *mut f32, b * c * s * s) };
        let ys = unsafe { std::slice::from_raw_parts_mut(y.data_ptr() as *mut f32, b * 3 * s * s) };
        xs.par_chunks_mut(c * s * s)
            .zip(ys.par_chunks_mut(3 * s * s))
            .zip(inds.par_iter().zip(params.par_iter()))
            .for_each(|((xo, yo), (&i, p))| {
                let src = Source { image: &examples[i].image, flows: &examples[i].flows };
                augment_into(&src, p, s, layout, xo, yo);
            });
    }
    let x = if plan.channels_last { x.permute([0, 3, 1, 2]) } else { x };
    Batch { epoch, index, x, y }
}

/// An uninitialised CPU tensor, in pinned memory when batches go to a CUDA device.
fn host_tensor(shape: &[i64], pin_for: Option<tch::Device>) -> Tensor {
    let t = Tensor::empty(shape, (tch::Kind::Float, tch::Device::Cpu));
    match pin_for {
        Some(d) if d.is_cuda() => t.pin_memory(d),
        _ => t,
    }
}

/// Stream id for training batches (test batches use another so they never share draws).
pub(crate) const TRAIN_STREAM: u64 = 1;
pub(crate) const TEST_STREAM: u64 = 2;

/// Starts the producer at batch `start_step` of epoch `start` and runs to the end of epoch
/// `end - 1`; dropping the receiver stops it.
pub(crate) fn spawn_train_batches(
    examples: Arc<Vec<Example>>,
    plan: BatchPlan,
    start: usize,
    start_step: usize,
    end: usize,
) -> std::io::Result<(Receiver<Batch>, JoinHandle<()>)> {
    let (tx, rx) = sync_channel::<Batch>(2);
    let handle = std::thread::Builder::new().name("batches".into()).spawn(move || {
        for epoch in start..end {
            let order = epoch_order(examples.len(), plan.per_epoch, plan.seed, TRAIN_STREAM, epoch);
            let skip = if epoch == start { start_step } else { 0 };
            for (index, inds) in order.chunks(plan.batch_size.max(1)).enumerate().skip(skip) {
                let rng = rng_for(plan.seed, TRAIN_STREAM, epoch, index);
                let batch = make_batch(&examples, inds, &plan, rng, epoch, index);
                if tx.send(batch).is_err() {
                    return; // trainer stopped (done, canceled or failed)
                }
            }
        }
    })?;
    Ok((rx, handle))
}

/// A batch thread and its channel, for either family: dropping it closes the channel (the
/// thread's next send fails and it ends) and joins the thread.
pub(crate) struct Producer<T> {
    rx: Option<Receiver<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T> Producer<T> {
    pub fn new(rx: Receiver<T>, thread: JoinHandle<()>) -> Self {
        Producer { rx: Some(rx), thread: Some(thread) }
    }
    /// The next item; `None` when the thread has ended (finished, or failed part-way).
    pub fn next(&self) -> Option<T> {
        self.rx.as_ref().and_then(|rx| rx.recv().ok())
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Test batches are the same at every evaluation (cellpose seeds numpy with 42 each time).
pub(crate) fn test_batches(examples: &[Example], plan: &BatchPlan) -> Vec<Batch> {
    let order = epoch_order(examples.len(), plan.per_epoch, plan.seed ^ 42, TEST_STREAM, 0);
    order
        .chunks(plan.batch_size.max(1))
        .enumerate()
        .map(|(index, inds)| {
            make_batch(examples, inds, plan, rng_for(plan.seed ^ 42, TEST_STREAM, 0, index), 0, index)
        })
        .collect()
}
