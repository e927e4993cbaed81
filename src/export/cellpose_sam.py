"""Network of this BioImage.IO package: cellpose {CELLPOSE_VERSION}'s Cellpose-SAM (`cellpose.vit.CPSAM`).

Written by cellpose-train-worker's `export --format bioimageio`. `CPSAM()` always builds SAM's
ViT-L; this subclass builds the same modules at the size the kwargs give (the weights file's
shapes), so a smaller network loads too. The weights file is the plain `torch.save` state_dict
that `cellpose.models.CellposeModel(pretrained_model=...)` loads.
"""
from functools import partial

import torch
from torch import nn
from cellpose.vit import BaseModel, CPSAM
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import Block, ImageEncoderViT


class CellposeSAMFlows(CPSAM):
    """CPSAM returning only its flow maps: [batch, 3, y, x] = dY, dX, cell probability (logit).

    embed_dim, num_heads, mlp_dim: the ViT's width, heads and MLP width; neck_dim: SAM's neck;
    rel_pos: [rows of rel_pos_h, rows of rel_pos_w] per block (all blocks attend globally, as
    cellpose 4 sets them; SAM's windowed blocks keep their shorter tables); grid: the token grid
    of the position embedding (tile size / ps).
    """

    def __init__(self, embed_dim=1024, num_heads=16, mlp_dim=4096, neck_dim=256, rel_pos=(),
                 in_chans=3, ps=8, nout=3, grid=(32, 32)):
        BaseModel.__init__(self, dtype=torch.float32)
        self.rdrop = 0.0  # inference only: no layer drop
        self.backbone = "sam_vitl"
        enc = ImageEncoderViT(img_size=1024, patch_size=16, in_chans=3, embed_dim=embed_dim, depth=0,
                              num_heads=num_heads, out_chans=neck_dim, qkv_bias=True,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True)
        enc.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=ps, stride=ps)
        enc.pos_embed = nn.Parameter(torch.zeros(1, grid[0], grid[1], embed_dim))
        blocks = []
        for rows_h, rows_w in rel_pos:
            blk = Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_dim / embed_dim, qkv_bias=True,
                        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=0,
                        input_size=((rows_h + 1) // 2, (rows_w + 1) // 2))
            if blk.mlp.lin1.out_features != mlp_dim:
                blk.mlp = MLPBlock(embedding_dim=embed_dim, mlp_dim=mlp_dim)
            blocks.append(blk)
        enc.blocks = nn.ModuleList(blocks)
        self.encoder = enc
        self.out = nn.Conv2d(neck_dim, nout * ps**2, kernel_size=1)
        self.W2 = nn.Parameter(torch.eye(nout * ps**2).reshape(nout * ps**2, nout, ps, ps),
                               requires_grad=False)
        self.nout = nout
        self.ps = ps

    def forward(self, x):
        return super().forward(x)[0]
