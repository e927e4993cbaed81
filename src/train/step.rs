//! One training step (zero grads, forward, `_loss_fn_seg`, backward, optimizer, loss sum), run
//! eagerly or, on CUDA, captured once into a CUDA graph and replayed: the step's ~1000 kernel
//! launches then cost one, which is what a small-batch U-Net needs to keep a fast GPU busy.
//!
//! Graph replay needs fixed addresses, so full-size batches are copied into static device
//! buffers first (asynchronously, from pinned memory). The first few full steps run eagerly
//! (cuDNN picks its algorithms, the optimizer allocates its state), then one is captured. A
//! smaller last batch of an epoch runs eagerly. If capture fails, training continues eagerly.

use std::time::Instant;

use tch::{Device, Kind, TchError, Tensor};

use super::batches::Batch;
use super::cuda_graph::CudaGraph;
use super::error::TrainError;
use super::loss::seg_loss;
use super::optim::Optimizer;
use crate::model::Model;

/// Eager full-size steps before capture.
const WARMUP_STEPS: usize = 3;

pub(crate) struct Stepper<'a> {
    model: &'a Model,
    compute: Kind,
    device: Device,
    /// Sum over the epoch of loss x batch size, kept on the device (read once per epoch).
    pub epoch_loss: Tensor,
    graphs: bool,
    statics: Option<(Tensor, Tensor)>,
    graph: Option<CudaGraph>,
    full_eager_steps: usize,
    profile: bool,
}

impl<'a> Stepper<'a> {
    pub fn new(model: &'a Model, compute: Kind, device: Device, use_graphs: bool, profile: bool) -> Self {
        let graphs = use_graphs && device.is_cuda() && CudaGraph::available();
        Stepper {
            model,
            compute,
            device,
            epoch_loss: Tensor::zeros([], (Kind::Float, device)),
            graphs,
            statics: None,
            graph: None,
            full_eager_steps: 0,
            profile,
        }
    }

    fn ops(&mut self, optim: &mut Optimizer, x: &Tensor, y: &Tensor) -> Result<(), TrainError> {
        let failed = |e: TchError| TrainError::step_failed(x, e);
        let t0 = Instant::now();
        optim.zero_grad();
        let out = self.model.net.forward_mixed(x, true, self.compute).map_err(failed)?;
        let loss = seg_loss(&out.maps, y).map_err(failed)?;
        let t1 = Instant::now();
        loss.f_backward().map_err(failed)?;
        let t2 = Instant::now();
        optim.apply();
        let _ = self.epoch_loss.g_add_(&(loss.detach() * (x.size()[0] as f64)));
        if self.profile {
            let t3 = Instant::now();
            if let Device::Cuda(i) = self.device {
                tch::Cuda::synchronize(i as i64);
            }
            tracing::info!(
                "profile: host enqueue forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms; device done after {:.1} ms",
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                (t3 - t2).as_secs_f64() * 1e3,
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        Ok(())
    }

    /// Trains on one batch with learning rate `lr`.
    pub fn step(
        &mut self,
        optim: &mut Optimizer,
        batch: &Batch,
        lr: f64,
        full_batch: i64,
    ) -> Result<(), TrainError> {
        optim.set_learning_rate(lr);
        let full = batch.x.size()[0] == full_batch;
        if !(self.graphs && full) {
            let x = batch.x.to_device_(self.device, Kind::Float, true, false);
            let y = batch.y.to_device_(self.device, Kind::Float, true, false);
            return self.ops(optim, &x, &y);
        }
        let (sx, sy) = self.statics.get_or_insert_with(|| {
            // same shape and strides as the batches (channels-last when they are)
            (batch.x.to_device(self.device).zero_(), batch.y.to_device(self.device).zero_())
        });
        // pinned source + non_blocking upload, then device-to-device into the static buffers:
        // queued behind the previous step, no host wait
        sx.copy_(&batch.x.to_device_(self.device, Kind::Float, true, false));
        sy.copy_(&batch.y.to_device_(self.device, Kind::Float, true, false));
        let (sx, sy) = (sx.shallow_clone(), sy.shallow_clone());
        if let Some(g) = &self.graph {
            return g.replay().map_err(TrainError::Cuda);
        }
        if self.full_eager_steps < WARMUP_STEPS {
            self.full_eager_steps += 1;
            return self.ops(optim, &sx, &sy);
        }
        let Device::Cuda(index) = self.device else { unreachable!("graphs only on CUDA") };
        let profile = std::mem::replace(&mut self.profile, false);
        let captured = CudaGraph::capture(index, || self.ops(optim, &sx, &sy));
        self.profile = profile;
        match captured {
            Ok((graph, ops)) => {
                ops?;
                tracing::debug!("training step captured as a CUDA graph");
                graph.replay().map_err(TrainError::Cuda)?;
                self.graph = Some(graph);
            }
            Err(e) => {
                tracing::warn!(error = %e, "CUDA graph capture failed; training continues without graphs");
                self.graphs = false;
                self.ops(optim, &sx, &sy)?;
            }
        }
        Ok(())
    }
}
