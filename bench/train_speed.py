"""Python cellpose 3.1.1.2 side of the training benchmark.

Trains CellposeModel's CPnet (nbase [2,32,64,128,256]) from scratch with train.train_seg on a folder
of images/_masks, and reports the mean wall time per step after the first epoch. Step boundaries
are taken from calls to train._loss_fn_seg (one per step), so a step covers everything train_seg
does per batch: augmentation, transfer, forward, loss, backward, optimizer.
"""
import argparse, json, time
import numpy as np
import torch
from cellpose import io, models, train

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--device", default="cpu")
ap.add_argument("--epochs", type=int, default=4)
ap.add_argument("--batch-size", type=int, default=8)
ap.add_argument("--bsize", type=int, default=224)
ap.add_argument("--out", required=True)
a = ap.parse_args()

imgs, lbls, _, *_ = io.load_train_test_data(a.data, mask_filter="_masks")
device = torch.device(a.device)
model = models.CellposeModel(gpu=a.device.startswith("cuda"), device=device, pretrained_model=False, nchan=2)
stamps = []
orig = train._loss_fn_seg
def timed(lbl, y, dev):
    loss = orig(lbl, y, dev)
    stamps.append(time.perf_counter())
    return loss
train._loss_fn_seg = timed
t0 = time.perf_counter()
_, losses, _ = train.train_seg(model.net, imgs, lbls, channels=[1, 2], normalize=True, n_epochs=a.epochs,
                               batch_size=a.batch_size, bsize=a.bsize, learning_rate=0.005, weight_decay=1e-5,
                               save_path="/tmp/cellpose-bench-py", model_name="bench", min_train_masks=1)
total = time.perf_counter() - t0
steps_per_epoch = -(-len(imgs) // a.batch_size)
d = np.diff(stamps)[steps_per_epoch - 1:]  # intervals that end in epochs >= 1 (each step syncs: loss.item())
json.dump({"steady_step_seconds": float(np.mean(d)), "steps": len(stamps), "total_seconds": total,
           "train_losses": [float(x) for x in losses], "torch_threads": torch.get_num_threads()}, open(a.out, "w"))
