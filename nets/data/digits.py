"""scikit-learn's bundled 8x8 handwritten digits: the offline default dataset."""
from __future__ import annotations

import torch

from ..checks import check_int
from .splits import Dataset, build_dataset, seeded_split

DIGITS_TEST_SIZE = 360


def load_digits(seed: int = 0, test_size: int = DIGITS_TEST_SIZE) -> Dataset:
    """The 1797 images (1 x 8 x 8, values 0..16 scaled to [0, 1]) split by `seed` into train/test.

    Normalized by the training split's mean and standard deviation.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images).to(torch.float32).unsqueeze(1) / 16.0
    labels = torch.from_numpy(bunch.target)
    check_int("test_size", test_size)
    if test_size >= len(labels):
        raise ValueError(f"test_size={test_size} is not allowed; digits has {len(labels)} images, "
                         "test_size must be smaller")
    train, test = seeded_split(len(labels), test_size, seed)
    source = (f"scikit-learn load_digits: {len(labels)} images, split with seed {seed} into "
              f"{len(train)} train / {len(test)} test")
    return build_dataset("digits", images[train], labels[train], images[test], labels[test], 10, source)
