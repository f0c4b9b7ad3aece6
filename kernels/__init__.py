"""Triton GEMM and convolution kernels with an explicit reduction order and precision.

Importing this package touches neither CUDA nor triton; the Triton kernels are imported on
first use of the "triton" or "interpret" backend.
"""
from .backends import BACKENDS
from .calls import CallCounter, counting, current_counter, reset_calls
from .conv import conv2d
from .matmul import matmul
from .modules import Conv2d, Linear
from .patch import patch
from .reduction import Policy, Reduction

__all__ = [
    "BACKENDS",
    "CallCounter",
    "Conv2d",
    "Linear",
    "Policy",
    "Reduction",
    "conv2d",
    "counting",
    "current_counter",
    "matmul",
    "patch",
    "reset_calls",
]
