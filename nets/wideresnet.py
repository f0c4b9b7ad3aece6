"""The Wide-ResNet shape shared by all conv nets here, and the random-init WRN baseline of Table 1.

Widths are 16 (stem), 16k, 32k, 64k (k = `widen`), three stages with strides 1, 2, 2, and a
head that averages over all pixels before one linear layer (global pooling, so 8x8 digits and
28x28 MNIST work as well as 32x32 CIFAR).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_int, check_real

STEM_WIDTH = 16
STAGE_STRIDES = (1, 2, 2)


def blocks_per_stage(depth: int, convs_per_block: int, network: str) -> int:
    """n in depth = 3 * convs_per_block * n + 4 (the Wide-ResNet depth convention)."""
    check_int("depth", depth)
    step = 3 * convs_per_block
    if depth < step + 4 or (depth - 4) % step:
        examples = ", ".join(str(step * n + 4) for n in (1, 2, 4, 8))
        raise ValueError(
            f"depth={depth} is not allowed; {network} needs depth = {step}*n + 4 with n >= 1 "
            f"blocks per stage (e.g. {examples})"
        )
    return (depth - 4) // step


def block_plan(depth: int, widen: int, convs_per_block: int, network: str) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of every block, in order; the first of each stage widens."""
    n = blocks_per_stage(depth, convs_per_block, network)
    check_int("widen", widen)
    plan = []
    width = STEM_WIDTH
    for stage, stride in enumerate(STAGE_STRIDES):
        out = STEM_WIDTH * widen * 2**stage
        plan.append((width, out, stride))
        plan.extend((out, out, 1) for _ in range(n - 1))
        width = out
    return plan


def needs_projection(in_channels: int, out_channels: int, stride: int) -> bool:
    """A block whose shape changes needs a 1x1 conv on its skip path; others add x itself."""
    return in_channels != out_channels or stride != 1


def dropout_or_identity(p: float) -> nn.Module:
    """Dropout(p), or Identity for p = 0 so a run without dropout draws no random numbers."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def global_average(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C): the head's pooling over every pixel."""
    return x.mean(dim=(2, 3))


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus the skip.

    The skip is x itself, or a 1x1 conv (stride s) of the first BN-ReLU output when the block
    changes shape, as in Zagoruyko & Komodakis.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.dropout = dropout_or_identity(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if needs_projection(in_channels, out_channels, stride)
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.norm1(x))
        out = self.conv2(self.dropout(F.relu(self.norm2(self.conv1(a)))))
        return out + (x if self.skip is None else self.skip(a))


class WideResNet(nn.Module):
    """Standard Wide-ResNet-`depth`-`widen` with two 3x3 convs per block (depth = 6n + 4).

    WRN-16-10 (the default) has 2 blocks per stage, i.e. 12 block convs, the same number of
    "skip-able layers" as ConstNet's 12 single-conv blocks. Init: convs He normal with fan-out
    (std sqrt(2 / (k*k*C_out))), BN weight 1 and bias 0, fc bias 0 and torch's default fc weight.
    Head: BN-ReLU-global average pool-fc.
    """

    def __init__(self, depth: int = 16, widen: int = 10, in_channels: int = 3, num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        plan = block_plan(depth, widen, convs_per_block=2, network="WideResNet")
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_real("dropout", dropout, 0.0, 1.0)
        self.stem = nn.Conv2d(in_channels, STEM_WIDTH, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*(WideBlock(i, o, s, dropout) for i, o, s in plan))
        self.norm = nn.BatchNorm2d(plan[-1][1])
        self.fc = nn.Linear(plan[-1][1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        return self.fc(global_average(F.relu(self.norm(out))))
