"""Golden fixtures for the training module, computed by Python cellpose 3.1.1.2 itself.

Writes tests/fixtures/train/:
  lr_schedule.json   -- the LR array of train_seg for several (learning_rate, n_epochs), produced by
                        executing the schedule lines taken from cellpose's own train_seg source
  loss_*.npy         -- a network output y, labels lbl and cellpose's _loss_fn_seg(lbl, y)
  norm_*.npy         -- images and transforms.normalize_img(...) results (default and percentile/invert options)
  optim_*.npy        -- parameters after torch.optim.{SGD,AdamW,RAdam} steps on fixed gradients

Run: .venv/bin/python tools/make_train_fixtures.py
"""
import inspect, json, os, re, sys
import numpy as np
import torch
from cellpose import train, transforms

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "train")
os.makedirs(out, exist_ok=True)

# --- LR schedule: run the block of train_seg that builds LR, verbatim from the installed cellpose
src = inspect.getsource(train.train_seg)
block = src[src.index("LR = np.linspace"):src.index("train_logger.info(f\">>> n_epochs")]
block = "\n".join(l[4:] if l.startswith("    ") else l for l in block.splitlines())
cases = []
for lr, n in [(0.2, 1), (0.2, 5), (0.1, 10), (0.005, 50), (0.01, 100), (0.01, 101), (0.2, 250), (0.2, 300), (0.2, 301), (0.05, 500), (0.01, 1000), (1e-4, 2000)]:
    env = {"np": np, "learning_rate": lr, "n_epochs": n}
    exec(block, env)
    LR = env["LR"]
    cases.append({"learning_rate": lr, "n_epochs": n, "lr": [float(v) for v in LR[:n]]})
with open(os.path.join(out, "lr_schedule.json"), "w") as f:
    json.dump(cases, f)

# --- loss
rng = np.random.default_rng(0)
for name, nout in [("loss3", 3)]:
    y = rng.normal(0, 2, (3, nout, 32, 32)).astype(np.float32)
    lbl = np.zeros((3, 3, 32, 32), np.float32)
    lbl[:, 0] = rng.random((3, 32, 32)) > 0.6
    lbl[:, 1:] = rng.normal(0, 0.5, (3, 2, 32, 32))
    loss = train._loss_fn_seg(lbl, torch.from_numpy(y), torch.device("cpu")).item()
    np.save(os.path.join(out, f"{name}_y.npy"), y)
    np.save(os.path.join(out, f"{name}_lbl.npy"), lbl)
    np.save(os.path.join(out, f"{name}_value.npy"), np.array([loss], np.float64))

# --- normalisation (images as cellpose sees them after convert_image: [C, H, W] here)
img = np.stack([rng.gamma(2.0, 300.0, (40, 50)), rng.normal(1000, 100, (40, 50)), np.full((40, 50), 7.0)]).astype(np.float32)
np.save(os.path.join(out, "norm_input.npy"), img)
np.save(os.path.join(out, "norm_default.npy"), transforms.normalize_img(img.copy(), axis=0))
np.save(os.path.join(out, "norm_p5_95_invert.npy"), transforms.normalize_img(img.copy(), axis=0, percentile=(5., 95.), invert=True))
np.save(os.path.join(out, "norm_lowhigh.npy"), transforms.normalize_img(img.copy(), axis=0, lowhigh=(100., 2000.)))

# --- optimizers: 4 steps with fixed gradients, LR changing per step as the schedule does
p0 = rng.normal(0, 1, (64,)).astype(np.float32)
grads = rng.normal(0, 1, (4, 64)).astype(np.float32)
lrs = [0.0, 0.01, 0.02, 0.03]
np.save(os.path.join(out, "optim_p0.npy"), p0)
np.save(os.path.join(out, "optim_grads.npy"), grads)
for name, make in [
    ("sgd", lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4)),
    ("adamw", lambda p: torch.optim.AdamW([p], lr=0.1, weight_decay=1e-4)),
    ("radam", lambda p: torch.optim.RAdam([p], lr=0.1, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-4)),
]:
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = make(p)
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    np.save(os.path.join(out, f"optim_{name}.npy"), p.detach().numpy())
print("wrote", out)
