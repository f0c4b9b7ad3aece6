"""Deterministic weight patterns of the paper's symmetric initializations.

Both act on a conv weight (C_out, C_in, kh, kw) with odd kernel sides, set every tap to zero
except the centre one, and so describe a kernel that looks at one pixel (a "delta" kernel)
times a matrix acting on the channels:

- averaging ("1"): every (out, in) pair gets `scale / C_in`, so each output channel is the mean
  of the input channels (all output channels identical).
- identity ("i"): output channel d copies input channel `d mod C_in` with weight `scale`; when
  C_out > C_in this replicates the channels, when C_out < C_in it keeps the first C_out.

With stride s the conv then subsamples the pixels (row, col) = (s*i, s*j); with padding 1 the
border never enters, because only the centre tap is non-zero.
"""
from __future__ import annotations

import torch


def _centre(weight: torch.Tensor) -> tuple[int, int]:
    if weight.dim() != 4:
        raise ValueError(f"weight must be a conv weight (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    kh, kw = weight.shape[2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"weight kernel must have odd sides to have a centre tap, got {kh}x{kw}")
    return kh // 2, kw // 2


@torch.no_grad()
def averaging_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Centre tap `scale / C_in` on every channel pair, zeros elsewhere (in place)."""
    row, col = _centre(weight)
    weight.zero_()
    weight[:, :, row, col] = scale / weight.shape[1]
    return weight


@torch.no_grad()
def identity_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Centre tap `scale` from input channel `d mod C_in` to output channel d, zeros elsewhere."""
    row, col = _centre(weight)
    weight.zero_()
    c_out, c_in = weight.shape[:2]
    out_channels = torch.arange(c_out)
    weight[out_channels, out_channels % c_in, row, col] = scale
    return weight
