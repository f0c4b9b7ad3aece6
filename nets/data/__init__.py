"""Datasets for the paper's networks, and seeded, resumable mini-batches.

`load_dataset(name, ...)` returns a `Dataset` (normalized train/test `ImageSet`s, a
`DatasetInfo`, the training augmentation); `BatchLoader` serves batches whose order and
augmentation depend only on (seed, epoch, step).
"""
from .catalog import DATASETS, load_dataset
from .cifar10 import CIFAR10_MEAN, CIFAR10_STD
from .idx import parse_idx, read_idx
from .loader import Batch, BatchLoader
from .splits import Dataset, DatasetInfo, ImageSet, derive_generator
from .transforms import PadCropFlip

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "Batch",
    "BatchLoader",
    "Dataset",
    "DatasetInfo",
    "ImageSet",
    "PadCropFlip",
    "derive_generator",
    "load_dataset",
    "parse_idx",
    "read_idx",
]
