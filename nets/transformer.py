"""A small vision transformer built from torch's own modules, for models kernels.patch cannot cover.

Each image is cut into patch x patch tiles, one token each; a linear layer embeds the tokens,
fixed sinusoidal positions are added, `depth` pre-norm nn.TransformerEncoderLayer blocks
(self-attention through nn.MultiheadAttention, then a feed-forward pair of linear layers) mix
them, and a LayerNorm, the mean over tokens and a linear classifier give the logits.

Nothing here is written for the kernels: attention's input projection runs F.linear on a bare
parameter, its scores and weighted values are batched matmuls, and its output projection is a
subclass of nn.Linear, so kernels.patch takes only the plain linear layers while
kernels.policy_mode takes every matmul, forward and backward.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .checks import check_int, check_real


def sinusoidal_positions(tokens: int, width: int) -> torch.Tensor:
    """(tokens, width) fixed positions: sin and cos of position / 10000^(2i / width), interleaved."""
    position = torch.arange(tokens, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    table = torch.zeros(tokens, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table.float()


class Transformer(nn.Module):
    """Patch tokens -> `depth` encoder layers of `width` features and `heads` heads -> classifier.

    The feed-forward layers have 2 * width units; `dropout` applies inside every encoder layer.
    Image sides must be multiples of `patch`; parameters start from torch's own initialisation.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, depth: int = 2, width: int = 32,
                 heads: int = 2, patch: int = 2, dropout: float = 0.0):
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_int("depth", depth)
        self.patch = check_int("patch", patch)
        check_int("heads", heads)
        if check_int("width", width) % (2 * heads):
            raise ValueError(f"width={width} is not allowed; it must be a multiple of 2 * heads = {2 * heads}")
        check_real("dropout", dropout, 0.0, 1.0)
        self.embed = nn.Linear(in_channels * patch * patch, width)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images as (N, H/p * W/p, C * p * p) patch tokens, row-major over patches."""
        n, c, h, w = images.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of patch={p}")
        tiles = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return tiles.reshape(n, (h // p) * (w // p), c * p * p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.tokens(images))
        tokens = tokens + sinusoidal_positions(tokens.shape[1], tokens.shape[2]).to(tokens)
        return self.head(self.norm(self.encoder(tokens)).mean(dim=1))
