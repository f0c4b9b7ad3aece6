"""ConstNet: a Wide-ResNet with one conv per block whose features are all identical at init.

At `init="zero"` the stem averages the input channels, every block conv is zero, every widening
skip averages channels and the classifier is zero: each block computes the identity (x + 0),
each widening block replicates the channel mean of BN(x), every channel of every hidden
activation equals every other, and the logits are exactly 0. Only something that treats channels
differently (dropout, a non-deterministic reduction order) can break that symmetry in training.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_bool, check_choice, check_int, check_real
from .patterns import averaging_
from .wideresnet import STEM_WIDTH, block_plan, dropout_or_identity, global_average, needs_projection

CONSTNET_INITS = ("zero", "he")


class ConstBlock(nn.Module):
    """h = BN(x); out = dropout(conv3x3(ReLU(h))); return x + out, or skip(h) + out when widening.

    The widening skip is a 1x1 conv (stride s, no bias) applied to h *before* the ReLU. Without
    batchnorm, h = x.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, batchnorm: bool, dropout: float):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels) if batchnorm else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.dropout = dropout_or_identity(dropout)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if needs_projection(in_channels, out_channels, stride)
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        out = self.dropout(self.conv(F.relu(h)))
        return out + (x if self.skip is None else self.skip(h))


class ConstNet(nn.Module):
    """ConstNet-`depth`-`widen` (paper section 2); depth = 3n + 4 gives n single-conv blocks per stage.

    The default (16, 10) has widths 16/160/320/640, 4 blocks per stage, 12 blocks, strides
    1/2/2 and 17,115,354 parameters (the standard WRN-16-10 has 17,116,634). Stem: 3x3 conv, no
    bias, then `stem_dropout` (so dropout can act on every layer); blocks: see `ConstBlock`,
    with `dropout` after each block conv; head: ReLU, global average pool, fc.

    init="zero": stem centre tap 1/C_in (zeros elsewhere), block convs 0, widening skips 1/C_in,
    fc weight and bias 0, BN weight 1 and bias 0 (the paper's identical-feature init).
    init="he": as "zero" but block convs normal with std sqrt(2 / (9 C_out)) (fan-out, as the
    reference code), the paper's random baseline; stem, skips and fc stay as in "zero".

    The paper's reference code ran each stage's forward twice per step and kept the second
    result, so BN running statistics moved twice per step; that is a quirk of that code, not of
    the method, and is not reproduced here. Conv and linear layers are registered in the order
    the forward pass uses them (see `kernels.reducing_layers`).
    """

    def __init__(self, depth: int = 16, widen: int = 10, in_channels: int = 3, num_classes: int = 10,
                 batchnorm: bool = True, dropout: float = 0.0, stem_dropout: float = 0.0,
                 init: str = "zero"):
        super().__init__()
        plan = block_plan(depth, widen, convs_per_block=1, network="ConstNet")
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_bool("batchnorm", batchnorm)
        check_real("dropout", dropout, 0.0, 1.0)
        check_real("stem_dropout", stem_dropout, 0.0, 1.0)
        self.init = check_choice("init", init, CONSTNET_INITS)
        self.stem = nn.Conv2d(in_channels, STEM_WIDTH, 3, padding=1, bias=False)
        self.stem_dropout = dropout_or_identity(stem_dropout)
        self.blocks = nn.Sequential(*(ConstBlock(i, o, s, batchnorm, dropout) for i, o, s in plan))
        self.fc = nn.Linear(plan[-1][1], num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Apply `self.init` (block convs draw from torch's global generator for "he")."""
        averaging_(self.stem.weight)
        for block in self.blocks:
            if self.init == "zero":
                block.conv.weight.zero_()
            else:
                block.conv.weight.normal_(0.0, math.sqrt(2.0 / (9 * block.conv.out_channels)))
            if block.skip is not None:
                averaging_(block.skip.weight)
            if isinstance(block.norm, nn.BatchNorm2d):
                block.norm.reset_parameters()
        self.fc.weight.zero_()
        self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem_dropout(self.stem(x)))
        return self.fc(global_average(F.relu(out)))
