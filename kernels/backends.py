"""Choosing and checking the backend that runs a reduction.

"triton"    compiled Triton kernels on CUDA tensors
"interpret" the same Triton kernels under the Triton interpreter on CPU tensors (tests);
            needs TRITON_INTERPRET=1 in the environment before triton is first imported
"emulate"   pure torch with the same order semantics (CPU default, test oracle)
"native"    torch's own kernels (cuBLAS/cuDNN/CPU BLAS): the Reduction is not applied
"auto"      triton for CUDA tensors, emulate for CPU tensors
"""
from __future__ import annotations

import os
import sys

import torch

from .reduction import Reduction

BACKENDS = ("auto", "triton", "interpret", "emulate", "native")


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for tensors on `device`, or a ValueError saying why not."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "emulate"
    if backend == "triton" and device.type != "cuda":
        raise ValueError(
            f"backend='triton' needs CUDA tensors, got tensors on {device}; "
            "use backend='emulate' (or 'interpret' with TRITON_INTERPRET=1) on CPU"
        )
    if backend == "interpret":
        if device.type != "cpu":
            raise ValueError(f"backend='interpret' runs on CPU tensors, got tensors on {device}")
        if not interpreter_enabled():
            raise ValueError("backend='interpret' needs TRITON_INTERPRET=1 set before triton is imported")
        if "triton" in sys.modules and not _triton_jit_interprets():
            raise ValueError(
                "backend='interpret': triton was imported before TRITON_INTERPRET=1 was set; "
                "set it at the start of the process"
            )
    return backend


def _triton_jit_interprets() -> bool:
    from .triton_support import jit_is_interpreted

    return jit_is_interpreted()


def check_reduction_on_backend(reduction: Reduction, backend: str, role: str) -> None:
    """Reject Reductions a backend cannot honour, naming the role."""
    if reduction.precision == "fp64" and backend in ("triton", "interpret"):
        raise ValueError(
            f"{role}: precision='fp64' is a reference path of the emulate backend; "
            f"backend={backend!r} allows precision 'fp32', 'tf32', 'fp16' or 'bf16'"
        )


def check_splits(reduction: Reduction, length: int, role: str) -> None:
    """splits must not exceed the reduction length (an empty K allows splits=1)."""
    if reduction.splits > max(length, 1):
        raise ValueError(
            f"{role}: splits={reduction.splits} exceeds the reduction length K={length}; "
            f"choose splits between 1 and {max(length, 1)}"
        )
