"""LeakyNet: a skip-free Wide-ResNet-shaped net kept linear at init by pairs of leaky-ReLU layers.

With slope a, LeakyReLU_a(-(1/a) LeakyReLU_a(x)) = -x for every real x. So when every even block
applies a channel pattern and every odd block the negated pattern divided by a, each pair of
blocks computes minus the composed pattern: the network is linear and keeps the signal at
initialization without skip connections (up to rounding; BN, after odd blocks, is affine in eval
mode and normalizes per batch in training mode).

That needs the odd block's pattern to commute with the activation. Selection maps (identity,
stride subsampling, channel replication) always do, so an all-`i` net computes
+-(subsample and replicate)(stem(x)) at init; averaging does only on inputs whose channels are
already identical, which holds after a `1` stem (as in the `1...` strings of the paper's Table 2).

Init string: one letter per conv (stem first, then every block), underscores ignored:
  i  identity: centre tap, output channel d <- input channel d mod C_in (replicates channels when
     widening; with stride 2 it picks every second pixel),
  1  averaging: centre tap 1/C_in on every channel pair (all output channels identical),
  h  random: He normal for leaky ReLU, fan-out (std sqrt(2 / (1 + a^2)) / sqrt(9 C_out)).
Odd blocks (block index 1, 3, 5, ... counting from 0) get their `i`/`1` pattern times -1/a; an
`h` layer is left as drawn, since scaling a random layer by -1/a would only blow it up.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_bool, check_int, check_real
from .patterns import averaging_, identity_
from .wideresnet import STEM_WIDTH, block_plan, blocks_per_stage, dropout_or_identity, global_average

LEAKY_LETTERS = ("i", "1", "h")


def default_init(depth: int) -> str:
    """Averaging stem, identity blocks: the reference code's default (`1_iiii_iiii_iiii` at depth 16)."""
    n = blocks_per_stage(depth, 1, "LeakyNet")
    return "1_" + "_".join("i" * n for _ in range(3))


def parse_init(init: str, depth: int) -> str:
    """The init string's letters (underscores dropped), checked against the number of convs."""
    if not isinstance(init, str):
        raise TypeError(f"init must be a str of letters {', '.join(LEAKY_LETTERS)}, got {type(init).__name__}")
    letters = init.replace("_", "")
    unknown = sorted(set(letters) - set(LEAKY_LETTERS))
    if unknown:
        raise ValueError(
            f"init={init!r} has unknown letter(s) {', '.join(map(repr, unknown))}; allowed: "
            "'i' (identity), '1' (averaging), 'h' (random He), '_' (ignored)"
        )
    expected = 1 + 3 * blocks_per_stage(depth, 1, "LeakyNet")
    if len(letters) != expected:
        raise ValueError(
            f"init={init!r} has {len(letters)} letters but depth={depth} has {expected} convs "
            f"(stem + {expected - 1} blocks), one letter each, e.g. {default_init(depth)!r}"
        )
    return letters


@torch.no_grad()
def init_conv_(weight: torch.Tensor, letter: str, odd: bool, slope: float) -> None:
    """Set one conv weight from its init letter; odd blocks' patterns are scaled by -1/slope."""
    if letter == "h":
        nn.init.kaiming_normal_(weight, a=slope, mode="fan_out", nonlinearity="leaky_relu")
        return
    scale = -1.0 / slope if odd else 1.0
    (identity_ if letter == "i" else averaging_)(weight, scale)


class LeakyBlock(nn.Module):
    """conv3x3 (no bias) -> LeakyReLU(slope) -> dropout -> BN (odd blocks, when batchnorm)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, slope: float, dropout: float,
                 norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.act = nn.LeakyReLU(slope)
        self.dropout = dropout_or_identity(dropout)
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(self.act(self.conv(x))))


class LeakyNet(nn.Module):
    """LeakyNet-`depth`-`widen` (paper section 3): stem conv, 3n conv blocks, no skips, zero fc.

    Same widths and strides as ConstNet (depth = 3n + 4; 13 convs and 16,853,562 parameters at
    depth 16, widen 10). The stem is a bare 3x3 conv (then `stem_dropout`); the head is
    LeakyReLU(slope), global average pool and a linear layer with weight and bias 0.
    `init=None` picks `default_init(depth)`.

    BN follows odd blocks only, i.e. closes each linear pair. Relative to the paper's reference
    code: its `1` stem had centre tap sqrt(2)/C_in, here 1/C_in (a pure average, as in
    ConstNet); the head's activation is the leaky ReLU there and here.
    """

    def __init__(self, depth: int = 16, widen: int = 10, init: str | None = None, slope: float = 0.01,
                 in_channels: int = 3, num_classes: int = 10, dropout: float = 0.0,
                 stem_dropout: float = 0.0, batchnorm: bool = True):
        super().__init__()
        plan = block_plan(depth, widen, convs_per_block=1, network="LeakyNet")
        self.letters = parse_init(default_init(depth) if init is None else init, depth)
        check_real("slope", slope, 0.0, 1.0, high_inclusive=True)
        if slope == 0:
            raise ValueError("slope=0 is not allowed; odd layers are divided by the slope, so it must lie in (0, 1]")
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_real("dropout", dropout, 0.0, 1.0)
        check_real("stem_dropout", stem_dropout, 0.0, 1.0)
        check_bool("batchnorm", batchnorm)
        self.slope = float(slope)
        self.stem = nn.Conv2d(in_channels, STEM_WIDTH, 3, padding=1, bias=False)
        self.stem_dropout = dropout_or_identity(stem_dropout)
        self.blocks = nn.Sequential(*(
            LeakyBlock(i, o, s, self.slope, dropout, norm=batchnorm and index % 2 == 1)
            for index, (i, o, s) in enumerate(plan)
        ))
        self.fc = nn.Linear(plan[-1][1], num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Apply the init letters (`h` layers draw from torch's global generator)."""
        init_conv_(self.stem.weight, self.letters[0], odd=False, slope=self.slope)
        for index, (block, letter) in enumerate(zip(self.blocks, self.letters[1:])):
            init_conv_(block.conv.weight, letter, odd=index % 2 == 1, slope=self.slope)
            if isinstance(block.norm, nn.BatchNorm2d):
                block.norm.reset_parameters()
        self.fc.weight.zero_()
        self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem_dropout(self.stem(x)))
        return self.fc(global_average(F.leaky_relu(out, self.slope)))
