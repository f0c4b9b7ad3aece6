"""Seeded mini-batches whose order and augmentation are pure functions of (seed, epoch, step).

Because nothing carries over from one batch to the next, a run resumed at (epoch, step) sees
exactly the batches it would have seen without the interruption.
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import torch

from ..checks import check_bool, check_int
from .splits import ImageSet, derive_generator

class Batch(NamedTuple):
    epoch: int
    step: int
    images: torch.Tensor
    labels: torch.Tensor


class BatchLoader:
    """Batches of `data` of size `batch_size` (the last one smaller unless `drop_last`).

    shuffle: each epoch visits the examples in a permutation drawn from (seed, epoch); without
    it, in stored order (for evaluation). augment: called as augment(images, generator) with a
    generator drawn from (seed, epoch, step). Batches live on the device of `data`.
    """

    def __init__(self, data: ImageSet, batch_size: int, seed: int = 0, shuffle: bool = True,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 drop_last: bool = False):
        if not isinstance(data, ImageSet):
            raise TypeError(f"data must be an ImageSet, got {type(data).__name__}")
        self.data = data
        self.batch_size = check_int("batch_size", batch_size)
        self.seed = check_int("seed", seed, minimum=0)
        self.shuffle = check_bool("shuffle", shuffle)
        self.drop_last = check_bool("drop_last", drop_last)
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable or None, got {type(augment).__name__}")
        self.augment = augment
        if drop_last and len(data) < batch_size:
            raise ValueError(f"batch_size={batch_size} with drop_last=True leaves no batch of {len(data)} examples")

    def __len__(self) -> int:
        """Steps per epoch (391 for CIFAR-10's 50000 images at batch 128)."""
        full, rest = divmod(len(self.data), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> torch.Tensor:
        """The example indices of `epoch`, in visiting order (CPU int64)."""
        check_int("epoch", epoch, minimum=0)
        if not self.shuffle:
            return torch.arange(len(self.data))
        return torch.randperm(len(self.data), generator=derive_generator(self.seed, "order", epoch))

    def batch(self, epoch: int, step: int, order: torch.Tensor | None = None) -> Batch:
        """Batch `step` of `epoch`; pass `order(epoch)` when drawing many batches of one epoch."""
        check_int("step", step, minimum=0)
        if step >= len(self):
            raise ValueError(f"step={step} is not allowed; an epoch has {len(self)} steps (0..{len(self) - 1})")
        order = self.order(epoch) if order is None else order
        index = order[step * self.batch_size:(step + 1) * self.batch_size].to(self.data.labels.device)
        images = self.data.images[index]
        if self.augment is not None:
            images = self.augment(images, derive_generator(self.seed, "augment", epoch, step))
        return Batch(epoch, step, images, self.data.labels[index])

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from `start_step` on (resume mid-epoch with start_step > 0)."""
        check_int("start_step", start_step, minimum=0)
        if start_step > len(self):
            raise ValueError(f"start_step={start_step} is not allowed; an epoch has {len(self)} steps")
        order = self.order(epoch)
        return (self.batch(epoch, step, order) for step in range(start_step, len(self)))
