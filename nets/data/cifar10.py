"""CIFAR-10 from the python-version batch files, with the paper's normalization and augmentation."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .splits import Dataset, build_dataset, require_data_dir
from .transforms import PadCropFlip

CIFAR10_MEAN = tuple(v / 255 for v in (125.3, 123.0, 113.9))
CIFAR10_STD = tuple(v / 255 for v in (63.0, 62.1, 66.7))
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
EXPECTED = (f"{CIFAR10_FOLDER}/ with {', '.join(CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES)} "
            "(the python version of CIFAR-10, as torchvision lays it out)")


def read_cifar_batches(folder: Path, names) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) in [0, 1] and int64 labels from pickled CIFAR-10 batch files."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry["labels"], dtype=np.int64))
    pixels = torch.from_numpy(np.concatenate(images)).to(torch.float32) / 255.0
    return pixels, torch.from_numpy(np.concatenate(labels))


def load_cifar10(data_dir, download: bool = False) -> Dataset:
    """50000 train / 10000 test images (3 x 32 x 32) from data_dir/cifar-10-batches-py.

    data_dir may also be the cifar-10-batches-py folder itself. Downloads (with torchvision, into
    data_dir) only when `download` is set. Normalized with the paper's per-channel mean and std;
    training augmentation PadCropFlip(pad=4).
    """
    directory = require_data_dir("cifar10", data_dir, EXPECTED)
    root = directory.parent if directory.name == CIFAR10_FOLDER else directory
    folder = root / CIFAR10_FOLDER
    missing = [name for name in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES if not (folder / name).is_file()]
    if missing and download:
        from torchvision.datasets import CIFAR10

        CIFAR10(root=str(root), train=True, download=True)
    elif missing:
        raise FileNotFoundError(f"CIFAR-10 files missing in {str(folder)!r}: {', '.join(missing)}; "
                                f"data_dir should hold {EXPECTED}; pass download=True to fetch them")
    train = read_cifar_batches(folder, CIFAR10_TRAIN_FILES)
    test = read_cifar_batches(folder, CIFAR10_TEST_FILES)
    source = f"CIFAR-10 batches in {folder}: {len(train[1])} train / {len(test[1])} test"
    return build_dataset("cifar10", *train, *test, 10, source, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         augment=PadCropFlip(pad=4))
