"""Python side of the cpsam training golden tests: cellpose 4.2.1.1 `train` on tiny CPSAMs.

Run with .venv/bin/python and .venv-cp4 first on PYTHONPATH (as tools/cpsam_ref.py):

    ... lr LR N [LR N ...]                        # the LR arrays of train_seg, as JSON
    ... augment IMGS.npy LBLS.npy OUT [--seed S] [--scale-range R]
                                                  # random_rotate_and_resize -> OUT_{x,y,u}.npy
    ... augstats IMG.npy LBL.npy [--draws K] [--seed S]   # statistics of K augmented tiles, JSON
    ... loss MODEL X.npy LBL.npy                  # _loss_fn_seg of the eval-mode network
    ... step MODEL X.npy LBL.npy OUT [--lr --wd --steps]  # AdamW steps, rdrop=0, -> state_dict
    ... train MODEL IMGS.npy LABELS.npy OUTDIR [--n-epochs --lr --wd --min-train-masks]
                                                  # train.train_seg; train_losses as JSON
                                                  # (--timing: with steady seconds per step)
    ... cploss MODEL IMGS.npy LABELS.npy [--seeds K]   # CellposeModel(pretrained_model=MODEL)
                                                  # loads it; mean loss on K augmented draws

`augment` records the five uniforms cellpose draws per image (scale, angle, flip, translation
y, x) so the Rust side can replay exactly those parameters. The LR array is taken from
train_seg's own source (the block after "# learning rate schedule"), not re-typed here.
"""
import argparse
import inspect
import json
import os
import sys
import textwrap
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpsam_ref import load_net, tiny_if  # noqa: E402


def cmd_lr(a):
    from cellpose import train

    src = inspect.getsource(train.train_seg)
    start = src.rindex("\n", 0, src.index("# learning rate schedule")) + 1
    end = src.index("train_logger.info", start)
    block = textwrap.dedent(src[start:end])
    out = []
    for lr, n in zip(a.pairs[::2], a.pairs[1::2]):
        scope = {"np": np, "learning_rate": float(lr), "n_epochs": int(n)}
        exec(block, scope)
        out.append([float(v) for v in scope["LR"][: int(n)]])
    print(json.dumps(out))


def recorded_rand():
    orig = np.random.rand
    draws = []

    def rand(*shape):
        v = orig(*shape)
        draws.extend(np.ravel(v).astype(float).tolist())
        return v

    return orig, rand, draws


def cmd_augment(a):
    from cellpose import transforms

    imgs = list(np.load(a.imgs).astype(np.float32))
    lbls = list(np.load(a.lbls).astype(np.float32))
    np.random.seed(a.seed)
    orig, rand, draws = recorded_rand()
    np.random.rand = rand
    try:
        x, y, _ = transforms.random_rotate_and_resize(
            imgs, lbls=lbls, rescale=np.ones(len(imgs), "float32"), bsize=256, scale_range=a.scale_range)
    finally:
        np.random.rand = orig
    np.save(a.out + "_x.npy", x.numpy().astype(np.float32))
    np.save(a.out + "_y.npy", y.numpy().astype(np.float32))
    np.save(a.out + "_u.npy", np.array(draws, np.float64).reshape(len(imgs), 5))


def tile_stats(x, y):
    """Statistics both sides compare: image moments, filled fraction, cellprob and flow sizes."""
    inside = y[:, 0] > 0.5
    mag = torch.sqrt(y[:, 1] ** 2 + y[:, 2] ** 2)
    return {
        "x_mean": float(x.mean()), "x_sq": float((x ** 2).mean()),
        "empty": float((x == 0).all(dim=1).float().mean()),
        "cellprob": float(inside.float().mean()),
        "flow_mag": float(mag[inside].mean()) if inside.any() else 0.0,
        "dy_mean": float(y[:, 1].mean()), "dx_sq": float((y[:, 2] ** 2).mean()),
    }


def cmd_augstats(a):
    from cellpose import transforms

    img, lbl = np.load(a.img).astype(np.float32), np.load(a.lbl).astype(np.float32)
    np.random.seed(a.seed)
    x, y, _ = transforms.random_rotate_and_resize(
        [img] * a.draws, lbls=[lbl] * a.draws, rescale=np.ones(a.draws, "float32"), bsize=256, scale_range=0.5)
    print(json.dumps(tile_stats(x, y)))


def cmd_loss(a):
    from cellpose.train import _loss_fn_seg

    net = load_net(a.model)
    with torch.no_grad():
        y = net(torch.from_numpy(np.load(a.x)))[0]
        loss = _loss_fn_seg(torch.from_numpy(np.load(a.lbl)), y, torch.device("cpu"))
    print(f"{loss.item():.9g}")


def cmd_step(a):
    from cellpose.train import _loss_fn_seg

    net = load_net(a.model)
    net.train()
    net.rdrop = 0.0  # layer drop draws random numbers: off so both sides compute the same step
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.wd)
    x, lbl = torch.from_numpy(np.load(a.x)), torch.from_numpy(np.load(a.lbl))
    losses = []
    for _ in range(a.steps):
        loss = _loss_fn_seg(lbl, net(x)[0], torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.save(net.state_dict(), a.out)
    print(json.dumps(losses))


def cmd_train(a):
    from cellpose import train

    net = load_net(a.model)
    if a.device != "cpu":
        net.to(torch.device(a.device))  # train_seg trains on the network's device
    imgs = list(np.load(a.imgs).astype(np.float32))
    labels = list(np.load(a.labels).astype(np.int32))
    torch.manual_seed(0)
    stamps, augment = [], train.random_rotate_and_resize

    def timed(*args, **kw):  # one call per step: the gaps between calls are step times
        stamps.append(time.perf_counter())
        return augment(*args, **kw)

    train.random_rotate_and_resize = timed
    _, losses, _ = train.train_seg(
        net, train_data=imgs, train_labels=labels, learning_rate=a.lr, weight_decay=a.wd,
        n_epochs=a.n_epochs, min_train_masks=a.min_train_masks, save_path=a.outdir, model_name="py")
    losses = [float(v) for v in losses]
    if a.timing:
        first = len(stamps) // a.n_epochs  # steady state: from the second epoch on
        steady = (stamps[-1] - stamps[first]) / max(1, len(stamps) - 1 - first)
        # per epoch (the same grain as the Rust side's epoch times), median: robust to a busy VM
        per = first or 1
        epochs = [(stamps[i + per] - stamps[i]) / per for i in range(first, len(stamps) - per, per)]
        print(json.dumps({"train_losses": losses, "steady_step_seconds": steady,
                          "median_step_seconds": float(np.median(epochs)) if epochs else steady,
                          "torch_threads": torch.get_num_threads()}))
    else:
        print(json.dumps(losses))


def cmd_cploss(a):
    from cellpose import dynamics, models, train, transforms

    tiny_if(a.model)
    m = models.CellposeModel(pretrained_model=a.model, device=torch.device("cpu"), use_bfloat16=False)
    net = m.net.eval()
    imgs = train._reshape_norm(list(np.load(a.imgs).astype(np.float32)),
                               normalize_params={**models.normalize_default, "normalize": True})
    labels = list(np.load(a.labels).astype(np.int32))
    flows = dynamics.labels_to_flows(labels, device=torch.device("cpu"))
    lbls = [f[1:] for f in flows]
    total = 0.0
    for s in range(a.seeds):
        np.random.seed(s)
        x, y, _ = transforms.random_rotate_and_resize(
            imgs, lbls=lbls, rescale=np.ones(len(imgs), "float32"), bsize=256, scale_range=0.5)
        with torch.no_grad():
            total += train._loss_fn_seg(y, net(x)[0], torch.device("cpu")).item()
    print(f"{total / a.seeds:.9g}")


def main(argv):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("lr"); s.add_argument("pairs", nargs="+", help="LR N pairs"); s.set_defaults(f=cmd_lr)
    s = sub.add_parser("augment"); s.add_argument("imgs"); s.add_argument("lbls"); s.add_argument("out")
    s.add_argument("--seed", type=int, default=0); s.add_argument("--scale-range", type=float, default=0.5)
    s.set_defaults(f=cmd_augment)
    s = sub.add_parser("augstats"); s.add_argument("img"); s.add_argument("lbl")
    s.add_argument("--draws", type=int, default=64); s.add_argument("--seed", type=int, default=0)
    s.set_defaults(f=cmd_augstats)
    s = sub.add_parser("loss"); s.add_argument("model"); s.add_argument("x"); s.add_argument("lbl"); s.set_defaults(f=cmd_loss)
    s = sub.add_parser("step"); s.add_argument("model"); s.add_argument("x"); s.add_argument("lbl"); s.add_argument("out")
    s.add_argument("--lr", type=float, default=1e-3); s.add_argument("--wd", type=float, default=0.1)
    s.add_argument("--steps", type=int, default=1); s.set_defaults(f=cmd_step)
    s = sub.add_parser("train"); s.add_argument("model"); s.add_argument("imgs"); s.add_argument("labels"); s.add_argument("outdir")
    s.add_argument("--n-epochs", type=int, default=10); s.add_argument("--lr", type=float, default=1e-5)
    s.add_argument("--wd", type=float, default=0.1); s.add_argument("--min-train-masks", type=int, default=1)
    s.add_argument("--timing", action="store_true"); s.add_argument("--device", default="cpu")
    s.set_defaults(f=cmd_train)
    s = sub.add_parser("cploss"); s.add_argument("model"); s.add_argument("imgs"); s.add_argument("labels")
    s.add_argument("--seeds", type=int, default=4); s.set_defaults(f=cmd_cploss)
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    a.f(a)


if __name__ == "__main__":
    main(sys.argv[1:])
