"""CIFAR-10 through torchvision, with the paper's normalization and augmentation."""
from __future__ import annotations

import torch

from .splits import Dataset, build_dataset, require_data_dir
from .transforms import PadCropFlip

CIFAR10_MEAN = tuple(v / 255 for v in (125.3, 123.0, 113.9))
CIFAR10_STD = tuple(v / 255 for v in (63.0, 62.1, 66.7))
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
EXPECTED = f"{CIFAR10_FOLDER}/ with {', '.join(CIFAR10_FILES)} (torchvision's CIFAR10 layout)"


def load_cifar10(data_dir, download: bool = False) -> Dataset:
    """50000 train / 10000 test images (3 x 32 x 32) from data_dir/cifar-10-batches-py.

    data_dir may also be the cifar-10-batches-py folder itself. Downloads (with torchvision, into
    data_dir) only when `download` is set. Training augmentation: PadCropFlip(pad=4).
    """
    from torchvision.datasets import CIFAR10

    directory = require_data_dir("cifar10", data_dir, EXPECTED)
    root = directory.parent if directory.name == CIFAR10_FOLDER else directory
    missing = [name for name in CIFAR10_FILES if not (root / CIFAR10_FOLDER / name).is_file()]
    if missing and not download:
        raise FileNotFoundError(f"CIFAR-10 files missing in {str(root / CIFAR10_FOLDER)!r}: {', '.join(missing)}; "
                                f"data_dir should hold {EXPECTED}; pass download=True to fetch them")
    parts = [CIFAR10(root=str(root), train=train, download=download) for train in (True, False)]
    tensors = []
    for part in parts:
        tensors.append(torch.from_numpy(part.data).permute(0, 3, 1, 2).contiguous().to(torch.float32) / 255.0)
        tensors.append(torch.tensor(part.targets, dtype=torch.int64))
    source = f"CIFAR-10 (torchvision) in {root}: 50000 train / 10000 test"
    return build_dataset("cifar10", *tensors, 10, source, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         augment=PadCropFlip(pad=4))
