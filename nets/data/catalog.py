"""Load any dataset by name."""
from __future__ import annotations

import inspect

from ..checks import call_by_name, check_bool, check_int
from .cifar10 import load_cifar10
from .digits import load_digits
from .mnist import load_mnist
from .splits import Dataset
from .synthetic import load_synthetic

DATASETS = {
    "digits": load_digits,
    "synthetic": load_synthetic,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
}


def load_dataset(name: str, data_dir=None, download: bool = False, seed: int = 0, **options) -> Dataset:
    """`load_dataset("mnist", data_dir="~/data")`: the dataset `name` with its options.

    data_dir/download matter to the file-based datasets (mnist, cifar10) and are ignored by the
    embedded ones (digits, synthetic); seed fixes a dataset's split or generation (not the
    training order, which `BatchLoader` seeds). Unknown names or options raise ValueError.
    """
    check_bool("download", download)
    check_int("seed", seed, minimum=0)
    factory = DATASETS.get(name.lower()) if isinstance(name, str) else None
    accepted = inspect.signature(factory).parameters if factory else {}
    common = {"data_dir": data_dir, "download": download, "seed": seed}
    options.update({key: value for key, value in common.items() if key in accepted})
    return call_by_name("dataset", DATASETS, name, options)
