"""Kernels timed against torch's with a correctness column, and repeats counted by their bits.

`measure` times a callable with device events (probes.timing.median_ms: the median of warmed
repeats) and gives its result's max relative error against a float64 reference, so that a fast
wrong kernel cannot look good. `distinct_results` counts the distinct
bit patterns among repeated calls: 1 for an op whose order is fixed.

Torch's references run with `reference_numerics`: TF32 only when the row under test is tf32, and
cuDNN in benchmark mode (it picks its fastest algorithm per shape, which may be non-deterministic).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch

from .fingerprint import fingerprint
from .timing import allow_tf32, median_ms


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: one number per result, safe where expected is 0.

    inf when actual is non-finite where expected is finite (NaN never passes as small); 0 when
    both are exactly equal, including all-zero results.
    """
    actual, expected = actual.detach().double(), expected.detach().double().to(actual.device)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    if (~actual.isfinite() & expected.isfinite()).any():
        return math.inf
    error = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    if error == 0.0:
        return 0.0
    return error / scale if scale > 0 else math.inf


@contextmanager
def reference_numerics(tf32: bool):
    """torch's references as they are usually run: TF32 only if `tf32`, cuDNN benchmark on."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with allow_tf32(tf32):
            yield
    finally:
        torch.backends.cudnn.benchmark = saved


def first_tensor(result) -> torch.Tensor:
    """The tensor a callable returned (autograd.grad returns a tuple of one)."""
    return result[0] if isinstance(result, (tuple, list)) else result


def measure(fn: Callable, expected: torch.Tensor, device: torch.device, *, warmup: int = 1,
            repeats: int = 2) -> dict:
    """{"ms": median time of fn(), "error": its result's max relative error against `expected`}.

    The first call (compilation, cuDNN's algorithm search) is checked, not timed.
    """
    error = max_relative_error(first_tensor(fn()), expected)
    return {"ms": round(median_ms(fn, device, warmup, repeats), 4), "error": error}


def distinct_results(fn: Callable, repeats: int) -> int:
    """How many distinct bit patterns `repeats` calls of fn() return (1: bitwise repeatable)."""
    return len({fingerprint(first_tensor(fn())) for _ in range(repeats)})


def conv_role(conv: Callable, role: str, x: torch.Tensor, w: torch.Tensor, grad_out: torch.Tensor) -> Callable:
    """A callable computing one role of `conv(x, w)`: the forward output, or the input or weight
    gradient for `grad_out` through a graph built once, so that each call runs only that role."""
    if role == "forward":
        return lambda: conv(x, w)
    x, w = x.detach().requires_grad_(role == "input_grad"), w.detach().requires_grad_(role == "weight_grad")
    out = conv(x, w)
    wanted = x if role == "input_grad" else w
    return lambda: torch.autograd.grad(out, wanted, grad_out, retain_graph=True)[0]
