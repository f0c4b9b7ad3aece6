"""The containers every dataset returns, and the helpers they share (seeded streams, splits, stats)."""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checks import check_int


def derive_generator(seed: int, stream: str, *path: int) -> torch.Generator:
    """A CPU generator seeded from (seed, stream name, *path) by numpy's SeedSequence.

    Distinct streams and paths give independent generators, and each is a pure function of its
    arguments, so e.g. the order of epoch 7 never depends on how many numbers epoch 6 drew. The
    path length enters the entropy too, since SeedSequence alone equates [1, 5] and [1, 5, 0].
    """
    check_int("seed", seed, minimum=0)
    entropy = [seed, zlib.crc32(stream.encode()), len(path), *path]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@dataclass(frozen=True)
class ImageSet:
    """Normalized float32 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dim() != 4 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"images must be (N, C, H, W) and labels (N,), got {tuple(self.images.shape)} "
                             f"and {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device) -> "ImageSet":
        """The same set on `device` (e.g. a GPU, so batches are gathered without host copies)."""
        return ImageSet(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a run record need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    train_size: int
    test_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    augmentation: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    """Train and test splits, their description, and the training augmentation (None for none).

    `augment(images, generator)` returns augmented images; `nets.data.BatchLoader` calls it
    with a generator derived from (seed, epoch, step).
    """

    train: ImageSet
    test: ImageSet
    info: DatasetInfo
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of (N, C, H, W) images, computed in float64."""
    flat = images.to(torch.float64).transpose(0, 1).flatten(1)
    return tuple(flat.mean(1).tolist()), tuple(flat.std(1).tolist())


def normalize(images: torch.Tensor, mean, std, chunk: int = 8192) -> torch.Tensor:
    """(images - mean) / std per channel, computed in float64 `chunk` images at a time, as float32."""
    shape = (1, -1, 1, 1)
    mean = torch.tensor(mean, dtype=torch.float64).view(shape)
    std = torch.tensor(std, dtype=torch.float64).view(shape)
    out = torch.empty(images.shape, dtype=torch.float32)
    for start in range(0, len(images), chunk):
        out[start:start + chunk] = (images[start:start + chunk].to(torch.float64) - mean) / std
    return out


def seeded_split(n: int, test_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train, test) index tensors covering range(n), from a permutation seeded by `seed`."""
    order = torch.randperm(n, generator=derive_generator(seed, "split", n, test_size))
    return order[test_size:].sort().values, order[:test_size].sort().values


def build_dataset(name: str, train_images: torch.Tensor, train_labels: torch.Tensor,
                  test_images: torch.Tensor, test_labels: torch.Tensor, num_classes: int, source: str,
                  mean=None, std=None, augment=None) -> Dataset:
    """Normalize images (N, C, H, W) with values in [0, 1] and describe them.

    mean/std default to the training split's own per-channel statistics.
    """
    if mean is None:
        mean, std = channel_stats(train_images)
    train = ImageSet(normalize(train_images, mean, std), train_labels.to(torch.int64))
    test = ImageSet(normalize(test_images, mean, std), test_labels.to(torch.int64))
    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        in_channels=train.images.shape[1],
        image_size=tuple(train.images.shape[2:]),
        train_size=len(train),
        test_size=len(test),
        mean=tuple(mean),
        std=tuple(std),
        source=source,
        augmentation="none" if augment is None else repr(augment),
    )
    return Dataset(train, test, info, augment)


def require_data_dir(dataset: str, data_dir, expected: str) -> Path:
    """`data_dir` as a Path, or a clear error when it is missing; `expected` lists its files."""
    if data_dir is None:
        raise ValueError(f"dataset {dataset!r} needs data_dir: a directory holding {expected}")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"data_dir {str(directory)!r} for dataset {dataset!r} is not a directory; "
                                f"it should hold {expected}")
    return directory
