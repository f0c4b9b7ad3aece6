"""A procedurally generated image task: the class is the orientation of a noisy grating.

Each image is cos(2 pi f (u cos(theta) + v sin(theta)) + phi) over pixel coordinates u, v in
[0, 1), with theta = pi * label / num_classes, a random frequency f in [1.5, 3) cycles per image,
a random phase phi and a random positive colour per channel, plus Gaussian pixel noise. Phase
and colour vary per image, so a classifier has to learn orientation-selective features: a quick,
learnable check for the conv nets, in any size (e.g. CIFAR-shaped 3 x 32 x 32 for GPU timing).
"""
from __future__ import annotations

import math

import torch

from ..checks import check_int, check_real
from .splits import Dataset, build_dataset, derive_generator

def oriented_gratings(count: int, num_classes: int, channels: int, image_size: int, noise: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` images (count, channels, image_size, image_size) and their labels."""
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    theta = math.pi * labels.to(torch.float64) / num_classes
    frequency = 1.5 + 1.5 * torch.rand(count, generator=generator, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(count, generator=generator, dtype=torch.float64)
    colour = 0.5 + torch.rand(count, channels, generator=generator, dtype=torch.float64)
    grid = torch.arange(image_size, dtype=torch.float64) / image_size
    u, v = grid.view(1, 1, -1), grid.view(1, -1, 1)
    position = u * theta.cos().view(-1, 1, 1) + v * theta.sin().view(-1, 1, 1)
    wave = torch.cos(2 * math.pi * frequency.view(-1, 1, 1) * position + phase.view(-1, 1, 1))
    images = colour.view(count, channels, 1, 1) * wave.unsqueeze(1)
    images += noise * torch.randn(images.shape, generator=generator, dtype=torch.float64)
    return images.to(torch.float32), labels


def load_synthetic(seed: int = 0, train_size: int = 2560, test_size: int = 512, num_classes: int = 10,
                   channels: int = 3, image_size: int = 32, noise: float = 0.5) -> Dataset:
    """Train and test sets drawn from independent streams of `seed`; normalized by train statistics."""
    check_int("train_size", train_size)
    check_int("test_size", test_size)
    check_int("num_classes", num_classes, minimum=2)
    check_int("channels", channels)
    check_int("image_size", image_size, minimum=2)
    check_real("noise", noise, 0.0, math.inf)
    shape = (num_classes, channels, image_size, noise)
    train = oriented_gratings(train_size, *shape, derive_generator(seed, "synthetic-train"))
    test = oriented_gratings(test_size, *shape, derive_generator(seed, "synthetic-test"))
    source = (f"synthetic oriented gratings, seed {seed}: {num_classes} orientations, {channels} x "
              f"{image_size} x {image_size}, noise std {noise}")
    return build_dataset("synthetic", *train, *test, num_classes, source)
