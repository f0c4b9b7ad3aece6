"""scikit-learn's bundled 8x8 handwritten digits: the offline default dataset."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..checks import check_int
from .splits import Dataset, build_dataset, seeded_split

DIGITS_TEST_SIZE = 360


def digits_table() -> np.ndarray:
    """scikit-learn's bundled digits.csv.gz as parsed by its load_digits (64 pixel values, then
    the label, per row), read from the installed package without importing scikit-learn, which
    would add a second to every run's start."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the digits dataset comes with scikit-learn, which is not installed: "
                                "pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"scikit-learn's digits file {path} is missing; reinstall scikit-learn")
    with gzip.open(path, "rt") as lines:
        return np.loadtxt(lines, delimiter=",")


def load_digits(seed: int = 0, test_size: int = DIGITS_TEST_SIZE) -> Dataset:
    """The 1797 images (1 x 8 x 8, values 0..16 scaled to [0, 1]) split by `seed` into train/test.

    Normalized by the training split's mean and standard deviation.
    """
    table = torch.from_numpy(digits_table())
    images = table[:, :-1].to(torch.float32).view(-1, 1, 8, 8) / 16.0
    labels = table[:, -1].to(torch.int64)
    check_int("test_size", test_size)
    if test_size >= len(labels):
        raise ValueError(f"test_size={test_size} is not allowed; digits has {len(labels)} images, "
                         "test_size must be smaller")
    train, test = seeded_split(len(labels), test_size, seed)
    source = (f"scikit-learn load_digits: {len(labels)} images, split with seed {seed} into "
              f"{len(train)} train / {len(test)} test")
    return build_dataset("digits", images[train], labels[train], images[test], labels[test], 10, source)
