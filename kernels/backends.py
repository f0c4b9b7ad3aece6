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

BACKENDS = ("auto", "triton", "interpret", "emulate", "native")


def default_device() -> torch.device:
    """CUDA when this machine has a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_backend_name(backend) -> str:
    """backend itself if it names a backend, else a ValueError listing them."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {', '.join(map(repr, BACKENDS))}")
    return backend


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for tensors on `device`, or a ValueError saying why not."""
    check_backend_name(backend)
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
    from .triton_launch import jit_is_interpreted

    return jit_is_interpreted()
