//! The tiles each Cellpose-SAM step trains on, and the thread that draws them ahead of the step.
//!
//! Every draw is a pure function of (seed, epoch, step): the epoch's image order
//! ([`epoch_order`]), its augmentation stream ([`rng_for`], cellpose's `np.random.seed(iepoch)`)
//! consumed in step order, and each step's layer-drop draws ([`layer_drop_draws`]). So the thread
//! that draws step `s + 1` while step `s` trains produces exactly what drawing
//! in the step would, a resumed run included, and the run's results do not change.
//! [`TileStream`] is that sequence; [`TileSource`] takes it in the step or from the thread.

use std::sync::mpsc::sync_channel;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

use super::augment::Cp4Augment;
use crate::train::batches::{epoch_order, Producer};
use crate::train::data::Example;
use crate::transforms::array3_to_tensor;

/// A prepared image as tensors: `[3, H, W]` image and targets, and its diameter.
pub(super) struct Item {
    pub image: Tensor,
    pub targets: Tensor,
    pub diameter: f64,
}

impl Item {
    /// Another handle on the same tensors (no copy), for the tile thread.
    fn share(&self) -> Item {
        Item {
            image: self.image.shallow_clone(),
            targets: self.targets.shallow_clone(),
            diameter: self.diameter,
        }
    }
}

pub(super) fn items(examples: &[Example], device: Device) -> Vec<Item> {
    examples
        .iter()
        .map(|e| Item {
            image: array3_to_tensor(&e.image).to_device(device),
            targets: array3_to_tensor(&e.flows).to_device(device),
            diameter: e.diameter,
        })
        .collect()
}

/// How tiles are cut from the images: the network's tile size, the zoom range, and the
/// `diam_mean` to rescale by (`None`: cellpose 4's default, no rescaling).
#[derive(Clone, Copy)]
pub(super) struct Tiles {
    pub bsize: usize,
    pub scale_range: f64,
    pub rescale: Option<f64>,
}

impl Tiles {
    /// The augmentation of `it`, drawn from `rng` (zoomed by diameter / diam_mean when rescaling).
    fn draw(&self, it: &Item, rng: &mut ChaCha8Rng) -> Cp4Augment {
        let size = it.image.size();
        let rsc = self.rescale.map_or(1.0, |diam_mean| it.diameter / diam_mean);
        Cp4Augment::draw(rng, size[1] as usize, size[2] as usize, self.bsize, self.scale_range, rsc)
    }

    /// One augmented batch `(x [B, 3, bs, bs], lbl [B, 3, bs, bs])` of `inds`.
    pub fn batch(&self, items: &[Item], inds: &[usize], rng: &mut ChaCha8Rng) -> (Tensor, Tensor) {
        let (mut xs, mut ys) = (Vec::with_capacity(inds.len()), Vec::with_capacity(inds.len()));
        for &i in inds {
            let it = &items[i];
            let (x, y) = self.draw(it, rng).apply(&it.image, &it.targets, self.bsize);
            xs.push(x);
            ys.push(y);
        }
        (Tensor::stack(&xs, 0), Tensor::stack(&ys, 0))
    }
}

/// RNG for the augmentation of one epoch (a pure function of seed and epoch, as cellpose's
/// `np.random.seed(iepoch)`); the test tiles use a fixed stream, as cellpose's `seed(42)`.
pub(super) fn rng_for(seed: u64, stream: u64, epoch: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r.set_word_pos((epoch as u128) << 40);
    r
}

/// The layer drop's uniform draws `[batch, n_blocks]` for one training step: a pure function of
/// (seed, epoch, step), from a stream of its own (not torch's global generator, which other
/// threads may use), so a resumed run drops the same blocks as an uninterrupted one.
pub(super) fn layer_drop_draws(
    seed: u64,
    epoch: usize,
    step: usize,
    batch: usize,
    n_blocks: usize,
) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(2);
    rng.set_word_pos((((epoch as u128) << 24) | step as u128) << 16);
    let draws: Vec<f32> = (0..batch * n_blocks).map(|_| rng.gen::<f32>()).collect();
    Tensor::from_slice(&draws).view([batch as i64, n_blocks as i64])
}

/// One training step's inputs: tiles, targets, how many images, and the layer-drop draws.
pub(super) struct StepTiles {
    pub x: Tensor,
    pub y: Tensor,
    pub n: usize,
    pub draws: Tensor,
}

/// What the tile thread needs besides the images.
#[derive(Clone, Copy)]
pub(super) struct TilePlan {
    pub tiles: Tiles,
    pub per_epoch: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub n_blocks: usize,
}

/// The tiles of every step from step `first` of epoch `start` to the end of epoch `end - 1`, in
/// order: the one sequence of draws, whether made in the step or on the tile thread.
pub(super) struct TileStream {
    items: Vec<Item>,
    plan: TilePlan,
    epoch: usize,
    end: usize,
    /// The next step of `epoch` and that epoch's image order and augmentation stream.
    step: usize,
    order: Vec<usize>,
    rng: ChaCha8Rng,
}

impl TileStream {
    pub fn new(items: &[Item], plan: TilePlan, start: usize, first: usize, end: usize) -> TileStream {
        let items: Vec<Item> = items.iter().map(Item::share).collect();
        let mut s = TileStream {
            items,
            plan,
            epoch: start,
            end,
            step: 0,
            order: Vec::new(),
            rng: rng_for(plan.seed, 1, start),
        };
        s.begin(start);
        // the steps done before a checkpoint: consume their draws so the next steps see theirs
        while s.step < first && s.step < s.steps() {
            for i in s.images(s.step).to_vec() {
                s.plan.tiles.draw(&s.items[i], &mut s.rng);
            }
            s.step += 1;
        }
        s
    }

    fn begin(&mut self, epoch: usize) {
        self.epoch = epoch;
        self.step = 0;
        self.order = epoch_order(self.items.len(), self.plan.per_epoch, self.plan.seed, 0, epoch);
        self.rng = rng_for(self.plan.seed, 1, epoch);
    }

    fn steps(&self) -> usize {
        self.order.len().div_ceil(self.plan.batch_size.max(1))
    }

    fn images(&self, step: usize) -> &[usize] {
        let b = self.plan.batch_size.max(1);
        let start = (step * b).min(self.order.len());
        &self.order[start..(start + b).min(self.order.len())]
    }
}

impl Iterator for TileStream {
    type Item = StepTiles;

    fn next(&mut self) -> Option<StepTiles> {
        while self.step >= self.steps() {
            if self.epoch + 1 >= self.end {
                return None;
            }
            self.begin(self.epoch + 1);
        }
        let inds = self.images(self.step).to_vec();
        let (x, y) = self.plan.tiles.batch(&self.items, &inds, &mut self.rng);
        let draws = layer_drop_draws(self.plan.seed, self.epoch, self.step, inds.len(), self.plan.n_blocks);
        self.step += 1;
        Some(StepTiles { x, y, n: inds.len(), draws })
    }
}

/// Where a step takes its tiles from: drawn in the step, or from the tile thread.
pub(super) enum TileSource {
    Inline(Box<TileStream>),
    Thread(Producer<StepTiles>),
}

impl TileSource {
    /// Draws on a thread at most two steps ahead when `ahead` (CUDA: the host draws the next
    /// tiles while the device runs the step), else in the step. Why not ahead on the CPU: there
    /// the step's own libtorch threads already fill every core, and a second thread running
    /// libtorch ops beside them made the tiny network's forward pass twice as slow (20 -> 40 ms on
    /// 2 cores: two OpenMP teams on two cores wait on each other), against 2.5 ms for the tiles.
    pub fn start(stream: TileStream, ahead: bool) -> std::io::Result<TileSource> {
        if !ahead {
            return Ok(TileSource::Inline(Box::new(stream)));
        }
        let (tx, rx) = sync_channel::<StepTiles>(2);
        let thread = std::thread::Builder::new().name("cpsam-tiles".into()).spawn(move || {
            for tiles in stream {
                if tx.send(tiles).is_err() {
                    return; // training stopped (done, canceled or failed)
                }
            }
        })?;
        Ok(TileSource::Thread(Producer::new(rx, thread)))
    }

    pub fn next(&mut self) -> Option<StepTiles> {
        match self {
            TileSource::Inline(s) => s.next(),
            TileSource::Thread(p) => p.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn items(n: usize) -> Vec<Item> {
        tch::manual_seed(7);
        (0..n)
            .map(|i| Item {
                image: Tensor::rand([3, 40 + i as i64, 36], (Kind::Float, Device::Cpu)),
                targets: Tensor::rand([3, 40 + i as i64, 36], (Kind::Float, Device::Cpu)),
                diameter: 10.0,
            })
            .collect()
    }

    fn plan() -> TilePlan {
        let tiles = Tiles { bsize: 32, scale_range: 0.5, rescale: None };
        TilePlan { tiles, per_epoch: 5, batch_size: 2, seed: 3, n_blocks: 4 }
    }

    fn same(a: &StepTiles, b: &StepTiles) -> bool {
        a.n == b.n && a.x.equal(&b.x) && a.y.equal(&b.y) && a.draws.equal(&b.draws)
    }

    #[test]
    fn a_stream_started_part_way_continues_the_full_runs_draws() {
        let items = items(4);
        // 5 images per epoch in batches of 2: 3 steps an epoch, 3 epochs
        let full: Vec<StepTiles> = TileStream::new(&items, plan(), 0, 0, 3).collect();
        assert_eq!(full.iter().map(|t| t.n).collect::<Vec<_>>(), [2, 2, 1, 2, 2, 1, 2, 2, 1]);
        // resumed before step 2 of epoch 1: the remaining 4 steps, tile for tile
        let tail: Vec<StepTiles> = TileStream::new(&items, plan(), 1, 2, 3).collect();
        assert_eq!(tail.len(), 4);
        assert!(tail.iter().zip(&full[5..]).all(|(a, b)| same(a, b)));
        // epochs draw differently
        assert!(!full[0].x.equal(&full[3].x));
    }

    #[test]
    fn the_tile_thread_yields_the_same_tiles_as_drawing_in_the_step() {
        let items = items(3);
        let mut inline = TileSource::start(TileStream::new(&items, plan(), 0, 1, 2), false).unwrap();
        let mut ahead = TileSource::start(TileStream::new(&items, plan(), 0, 1, 2), true).unwrap();
        let mut n = 0;
        while let Some(a) = inline.next() {
            let b = ahead.next().expect("the thread yields as many steps");
            assert!(same(&a, &b), "step {n} differs");
            n += 1;
        }
        assert!(ahead.next().is_none());
        assert_eq!(n, 5);
    }
}
