"""MNIST from a directory of IDX files (as torchvision or the original site lays them out).

Looks in data_dir itself and in data_dir/MNIST/raw (torchvision's layout), for each file with
or without .gz. With all four files: the standard 60000 / 10000 split. With only the two t10k
files (an offline copy of the official test set): a fixed split of those 10000 images, seeded by
`seed`, into 8000 train / 2000 test, and the dataset's `source` says so.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .idx import read_idx
from .splits import Dataset, build_dataset, require_data_dir, seeded_split

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
T10K_TEST_SIZE = 2000
EXPECTED = ("the MNIST IDX files " + ", ".join(f"{name}[.gz]" for pair in MNIST_FILES.values() for name in pair)
            + " (directly or under MNIST/raw; the two t10k files alone give an 8000/2000 split)")


def find_idx_file(directory: Path, name: str) -> Path | None:
    for folder in (directory, directory / "MNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_part(directory: Path, part: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images (N, 1, 28, 28) in [0, 1], labels) of one part, or None when a file is missing."""
    paths = [find_idx_file(directory, name) for name in MNIST_FILES[part]]
    if None in paths:
        return None
    images, labels = (torch.from_numpy(read_idx(path)) for path in paths)
    if images.dim() != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{paths[0]} and {paths[1]} do not hold N images with N labels: "
                         f"shapes {tuple(images.shape)} and {tuple(labels.shape)}")
    return images.unsqueeze(1).to(torch.float32) / 255.0, labels


def download_mnist(directory: Path) -> None:
    """Fetch the four files with torchvision into directory/MNIST/raw."""
    from torchvision.datasets import MNIST

    for train in (True, False):
        MNIST(root=str(directory), train=train, download=True)


def load_mnist(data_dir, download: bool = False, seed: int = 0) -> Dataset:
    """MNIST from `data_dir` (downloaded there by torchvision first when `download` is set)."""
    directory = require_data_dir("mnist", data_dir, EXPECTED)
    if download and (read_part(directory, "train") is None or read_part(directory, "t10k") is None):
        download_mnist(directory)
    train, t10k = read_part(directory, "train"), read_part(directory, "t10k")
    if t10k is None:
        raise FileNotFoundError(f"no MNIST test files in {str(directory)!r}; expected {EXPECTED}; "
                                "pass download=True to fetch them")
    if train is not None:
        source = f"MNIST IDX files in {directory}: official 60000 train / 10000 test"
        return build_dataset("mnist", *train, *t10k, 10, source)
    images, labels = t10k
    train_index, test_index = seeded_split(len(labels), T10K_TEST_SIZE, seed)
    source = (f"MNIST t10k IDX files in {directory} only: the 10000 official test images split with "
              f"seed {seed} into {len(train_index)} train / {len(test_index)} test")
    return build_dataset("mnist", images[train_index], labels[train_index], images[test_index],
                         labels[test_index], 10, source)
