"""One GEMM under one Reduction on one backend: checks, call numbering and dispatch."""
from __future__ import annotations

import torch

from . import emulate
from .backends import check_reduction_on_backend, check_splits
from .calls import current_counter
from .formats import FLOAT_INPUT_DTYPES
from .order import call_key
from .reduction import Reduction


def check_float_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_INPUT_DTYPES:
        allowed = ", ".join(str(d).replace("torch.", "") for d in FLOAT_INPUT_DTYPES)
        raise TypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}; allowed: {allowed}")


def next_key(reduction: Reduction) -> int:
    """The call key of the next seeded call (0 for orders that need none)."""
    if not reduction.seeded:
        return 0
    return call_key(reduction.seed, current_counter().take())


def run_gemm(a, b, reduction: Reduction, backend: str, out_dtype: torch.dtype, role: str = "forward"):
    """a (M, K) @ b (K, N) on a resolved backend; operands may have any strides."""
    if backend == "native":
        return torch.matmul(a.to(out_dtype), b.to(out_dtype))
    check_reduction_on_backend(reduction, backend, role)
    check_splits(reduction, a.shape[1], role)
    key = next_key(reduction)
    if backend == "emulate":
        return emulate.gemm(a, b, reduction, key, out_dtype)
    from . import triton_gemm

    return triton_gemm.gemm(a, b, reduction, key, out_dtype)
