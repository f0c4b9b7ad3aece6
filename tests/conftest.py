"""Test set-up: CPU runs use the Triton interpreter for Triton kernels; `gpu` tests skip without CUDA.

TRITON_INTERPRET must be set before triton is first imported, so it is set here when no GPU is
present. Compilation checks for sm_80/sm_90 run in a subprocess without it.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def generator():
    """A seeded generator, so every test draws fresh but replayable random inputs."""
    return torch.Generator().manual_seed(20261123)
