"""Triton GEMM and convolution kernels with an explicit reduction order and precision.

Importing this package touches neither CUDA nor triton; the Triton kernels are imported on
first use of the "triton" or "interpret" backend.
"""
from .backends import BACKENDS
from .calls import CallCounter, counting, current_counter, reset_calls
from .matmul import matmul
from .reduction import Policy, Reduction

__all__ = [
    "BACKENDS",
    "CallCounter",
    "Policy",
    "Reduction",
    "counting",
    "current_counter",
    "matmul",
    "reset_calls",
]
