"""Triton GEMM and convolution kernels with an explicit reduction order and precision.

Importing this package touches neither CUDA nor triton; the Triton kernels are imported on
first use of the "triton" or "interpret" backend.

    reduction, geometry        the vocabulary: Reduction, Policy, modes...; each role's K
    gemm, conv                 each op's public function, autograd and dispatch
    gemm_emulate, conv_emulate the op in pure torch (CPU default, test oracle)
    gemm_triton, conv_triton   the op's Triton kernel
    triton_launch              what the Triton kernels share (rounding, tiles, launch config)
    order, order_cpu, order_triton   the splitk order: its definition, on CPU, on the GPU
    operands_emulate, workers_emulate   the emulate backend's operand matrices and CPU workers
    modules, patch             drop-in Conv2d / Linear, and patching a model with them
    dispatch, dispatch_roles, dispatch_report   policy_mode: every aten matmul and convolution
    function_mode              function_policy_mode: F.conv2d, F.linear, the matmul family
    aot_variants, aot          compiling every kernel variant without a GPU
"""
from . import geometry
from .backends import BACKENDS, default_device, resolve_backend
from .calls import CallCounter, counting, current_counter, reset_calls
from .conv import conv2d
from .dispatch import policy_mode
from .function_mode import function_policy_mode
from .gemm import matmul
from .modules import Conv2d, Linear, reducing_layers
from .patch import patch
from .workers_emulate import threads_to_workers
from .reduction import (
    ACCUMULATES,
    GRANULARITIES,
    KERNEL_ACCUMULATES,
    KERNEL_PRECISIONS,
    MODES,
    PRECISIONS,
    ROLES,
    Policy,
    Reduction,
)

__all__ = [
    "ACCUMULATES",
    "BACKENDS",
    "GRANULARITIES",
    "KERNEL_ACCUMULATES",
    "KERNEL_PRECISIONS",
    "MODES",
    "PRECISIONS",
    "ROLES",
    "CallCounter",
    "Conv2d",
    "Linear",
    "Policy",
    "Reduction",
    "conv2d",
    "counting",
    "current_counter",
    "default_device",
    "function_policy_mode",
    "geometry",
    "matmul",
    "patch",
    "policy_mode",
    "reducing_layers",
    "reset_calls",
    "resolve_backend",
    "threads_to_workers",
]
