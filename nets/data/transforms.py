"""Training augmentation on image tensors, driven by an explicit generator.

Random numbers are drawn on the CPU generator and only then moved to the images' device, so a
batch is augmented identically on every device; cropping and flipping only move values, so the
result is exact.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..checks import check_bool, check_int


class PadCropFlip:
    """Reflect-pad by `pad`, crop back to the original size at a random offset, flip with p = 1/2.

    With pad=4 on 32x32 images this is the paper's CIFAR-10 augmentation (reflect-pad 4, random
    crop 32, horizontal flip). Applying it after per-channel normalization equals applying it
    before, since both crop and flip only move pixels and reflect padding copies them.
    """

    def __init__(self, pad: int = 4, flip: bool = True):
        self.pad = check_int("pad", pad, minimum=0)
        self.flip = check_bool("flip", flip)

    def __repr__(self) -> str:
        return f"PadCropFlip(pad={self.pad}, flip={self.flip})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        if self.pad >= min(height, width):
            raise ValueError(f"pad={self.pad} must be smaller than the image sides {height}x{width} "
                             "for reflect padding")
        offsets = torch.randint(0, 2 * self.pad + 1, (batch, 2), generator=generator)
        flips = torch.rand(batch, generator=generator) < (0.5 if self.flip else 0.0)
        rows = offsets[:, :1] + torch.arange(height)
        cols = offsets[:, 1:] + torch.arange(width)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
        device = images.device
        rows, cols = rows.to(device), cols.to(device)
        padded = F.pad(images, (self.pad,) * 4, mode="reflect") if self.pad else images
        picked = padded[torch.arange(batch, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2).contiguous()
