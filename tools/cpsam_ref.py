"""Python side of the cpsam golden and interop tests: cellpose 4.2.1.1 + segment-anything.

Run with .venv/bin/python and .venv-cp4 first on PYTHONPATH (scripts/setup.sh makes both):

    PYTHONPATH=.venv-cp4 .venv/bin/python tools/cpsam_ref.py tiny OUT [--bf16] [--cells]
    ... forward MODEL IN.npy OUT.npy [IN OUT ...]  # CPSAM().load_model + forward, fp32, eval mode
    ... eval MODEL IMG.npy OUT [--diameter D ...] [--channel-axis A]  # OUT_{masks,dp,cellprob}<i>.npy per diameter
    ... vitl OUT [--forward IN.npy OUT.npy]    # random full-size CPSAM().save_model (+ forward)
    ... check MODEL                            # CellposeModel(pretrained_model=MODEL) loads it
    ... ap TRUE.npy PRED.npy                   # metrics.average_precision at 0.5, 0.75, 0.9

`tiny` builds a CPSAM exactly as cellpose 4 does (vit.CPSAM.__init__: 8x8 patches cut from the
16x16 kernel, position embeddings subsampled to a 32x32 grid, every block global) around a small
segment-anything ImageEncoderViT (width 64, depth 2, 2 heads, neck 32; block 0 windowed with
window 14 -> 27-row tables, block 1 global -> 127-row tables), with every parameter randomised so
no zero-initialised term hides a mistake. `--cells` sets the readout so that every 8x8 token
predicts flows towards its centre and a positive cellprob: a random network then still yields
masks (one per token), enough to compare masks and AP end to end.
"""
import argparse
import sys
from functools import partial
from types import SimpleNamespace

import numpy as np
import torch


def _tiny_encoder(_checkpoint=None):
    from segment_anything.modeling import ImageEncoderViT

    enc = ImageEncoderViT(
        img_size=1024, patch_size=16, in_chans=3, embed_dim=64, depth=2, num_heads=2,
        mlp_ratio=4, out_chans=32, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=14, global_attn_indexes=(1,),
    )
    return SimpleNamespace(image_encoder=enc)


def build_tiny(seed=0, cells=False):
    import cellpose.vit as vit

    torch.manual_seed(seed)
    real = vit.sam_model_registry
    vit.sam_model_registry = {"vit_l": _tiny_encoder}
    try:
        net = vit.CPSAM()
    finally:
        vit.sam_model_registry = real
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in ("W2", "diam_mean", "diam_labels"):
                continue
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or ".neck.1.weight" in name or ".neck.3.weight" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "rel_pos" in name or "pos_embed" in name or name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        net.diam_labels.fill_(27.0)
        if cells:
            ps, nout = net.ps, net.nout
            net.out.weight.mul_(0.02)
            d = torch.arange(ps, dtype=torch.float32) - (ps - 1) / 2
            bias = torch.zeros(nout, ps, ps)
            bias[0] = -d[:, None] * 2.0  # dY towards the token centre (network scale: 5x unit flows)
            bias[1] = -d[None, :] * 2.0
            bias[2] = 3.0
            net.out.bias.copy_(bias.reshape(-1))
    return net.eval()


def cmd_tiny(a):
    net = build_tiny(a.seed, a.cells)
    sd = net.state_dict()
    if a.bf16:
        sd = {k: v.to(torch.bfloat16) if k != "W2" else v for k, v in sd.items()}
    torch.save(sd, a.out)


def tiny_if(path):
    """Makes cellpose 4 build the tiny encoder when `path` holds a tiny model (width 64)."""
    import cellpose.vit as vit

    sd = torch.load(path, weights_only=True, map_location="cpu")
    key = next(k for k in sd if k.endswith("encoder.pos_embed"))
    if sd[key].shape[-1] != 1024:
        vit.sam_model_registry = {"vit_l": _tiny_encoder}


def load_net(path):
    import cellpose.vit as vit

    tiny_if(path)
    net = vit.CPSAM()
    net.load_model(path, device=torch.device("cpu"))
    return net.eval()


def cmd_forward(a):
    net = load_net(a.model)
    for inp, out in zip(a.io[::2], a.io[1::2]):
        x = torch.from_numpy(np.load(inp))
        with torch.no_grad():
            y = net(x)[0]
        np.save(out, y.numpy().astype(np.float32))


def cmd_eval(a):
    from cellpose import models

    tiny_if(a.model)
    m = models.CellposeModel(pretrained_model=a.model, device=torch.device("cpu"), use_bfloat16=False)
    img = np.load(a.image)
    for i, d in enumerate(a.diameter):
        masks, flows, _ = m.eval(img, diameter=d or None, channel_axis=a.channel_axis, bsize=a.bsize,
                                 batch_size=8, niter=a.niter)
        np.save(f"{a.output}_masks{i}.npy", masks.astype(np.uint32))
        np.save(f"{a.output}_dp{i}.npy", flows[1].astype(np.float32))
        np.save(f"{a.output}_cellprob{i}.npy", flows[2].astype(np.float32))


def cmd_vitl(a):
    import cellpose.vit as vit

    torch.manual_seed(a.seed)
    net = vit.CPSAM()
    with torch.no_grad():  # SAM zero-initialises these; random values exercise them
        for name, p in net.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.05)
    net.save_model(a.out)
    print(sum(p.numel() for p in net.parameters()), len(net.state_dict()))
    if a.forward:
        net.eval()
        with torch.no_grad():
            y = net(torch.from_numpy(np.load(a.forward[0])))[0]
        np.save(a.forward[1], y.numpy().astype(np.float32))


def cmd_check(a):
    from cellpose import models, vit

    tiny_if(a.model)
    m = models.CellposeModel(pretrained_model=a.model, device=torch.device("cpu"), use_bfloat16=False)
    net = vit.CPSAM()
    net.load_model(a.model, device=torch.device("cpu"))
    sd = torch.load(a.model, weights_only=True)
    mine = m.net.state_dict()
    assert list(sd.keys()) == list(mine.keys()), "key order differs from CPSAM().state_dict()"
    for k, v in sd.items():
        assert torch.equal(mine[k], v.to(mine[k].dtype)), k
        assert torch.equal(net.state_dict()[k], v.to(mine[k].dtype)), k
    print(len(sd), sum(v.numel() for v in sd.values()))


def cmd_ap(a):
    from cellpose import metrics

    t, p = np.load(a.true), np.load(a.pred)
    ap, tp, fp, fn = metrics.average_precision([t], [p], threshold=[0.5, 0.75, 0.9])
    print(" ".join(f"{v:.9f}" for v in ap[0]), " ".join(str(int(v)) for v in tp[0]))


def main(argv):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("tiny"); s.add_argument("out"); s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bf16", action="store_true"); s.add_argument("--cells", action="store_true")
    s.set_defaults(f=cmd_tiny)
    s = sub.add_parser("forward"); s.add_argument("model"); s.add_argument("io", nargs="+", help="IN.npy OUT.npy pairs")
    s.set_defaults(f=cmd_forward)
    s = sub.add_parser("eval"); s.add_argument("model"); s.add_argument("image"); s.add_argument("output")
    s.add_argument("--diameter", type=float, nargs="+", default=[0.0]); s.add_argument("--channel-axis", type=int, default=None)
    s.add_argument("--bsize", type=int, default=256); s.add_argument("--niter", type=int, default=None)
    s.set_defaults(f=cmd_eval)
    s = sub.add_parser("vitl"); s.add_argument("out"); s.add_argument("--seed", type=int, default=0)
    s.add_argument("--forward", nargs=2, default=None)
    s.set_defaults(f=cmd_vitl)
    s = sub.add_parser("check"); s.add_argument("model"); s.set_defaults(f=cmd_check)
    s = sub.add_parser("ap"); s.add_argument("true"); s.add_argument("pred"); s.set_defaults(f=cmd_ap)
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    a.f(a)


if __name__ == "__main__":
    main(sys.argv[1:])
