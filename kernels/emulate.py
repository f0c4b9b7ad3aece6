"""The emulate backend: the GEMM's reduction order in pure torch (CPU default, test oracle).

Within a chunk, torch's own matmul forms the fp32 (or fp64) dot products, as the tensor cores do
inside a Triton tile; chunk boundaries, operand rounding, partial-sum dtype and the order in
which chunk partials are added follow kernels.order exactly, so emulate and Triton agree on
everything but the order inside a chunk.

Atomic mode on this backend is emulated: chunk partials are added in a pseudo-random order
drawn from OS entropy on every call (per element, tile or call as the granularity says), which
models the arrival order of atomic adds; it is not reproducible, by design.
"""
from __future__ import annotations

import secrets

import torch

from . import order_cpu
from .formats import ACCUMULATE_DTYPES, add_rounded, round_operand
from .order import chunk_bounds, chunk_order, order_index
from .reduction import Reduction


def chunk_partials(a: torch.Tensor, b: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Partial products of each K chunk, rounded to the accumulate dtype: (splits, M, N)."""
    a = round_operand(a, reduction.precision)
    b = round_operand(b, reduction.precision)
    acc_dtype = ACCUMULATE_DTYPES[reduction.accumulate]
    partials = torch.empty(reduction.splits, a.shape[0], b.shape[1], dtype=acc_dtype, device=a.device)
    for s, (lo, hi) in enumerate(chunk_bounds(a.shape[1], reduction.splits)):
        if acc_dtype == a.dtype:
            torch.matmul(a[:, lo:hi], b[lo:hi], out=partials[s])
        else:
            partials[s] = a[:, lo:hi] @ b[lo:hi]
    return partials


def sum_in_order(partials: torch.Tensor) -> torch.Tensor:
    """Add partials[0] + partials[1] + ... left to right, rounding each sum to their dtype."""
    total = partials[0]
    for term in partials[1:]:
        total = add_rounded(total, term)
    return total


def sum_in_splitk_order(partials: torch.Tensor, key: int, granularity: str) -> torch.Tensor:
    """The partials (splits, M, N) added in the splitk order of each element: (M, N)."""
    if partials.device.type == "cpu" and granularity != "call" and partials.dtype in order_cpu.SUMMABLE_DTYPES:
        return order_cpu.sum_in_order(partials, key, granularity)
    return sum_in_order(ordered_partials(partials, key, granularity))


def ordered_partials(partials: torch.Tensor, key: int, granularity: str) -> torch.Tensor:
    """The partials rearranged so that position 0 along dim 0 is added first."""
    splits, m, n = partials.shape
    if partials.device.type == "cpu" and granularity != "call":
        return order_cpu.gather_in_order(partials, key, granularity)
    order = chunk_order(key, order_index(m, n, granularity, partials.device), splits)
    if granularity == "call":
        return partials[order.view(-1)]
    return torch.gather(partials, 0, order)


def gemm(a: torch.Tensor, b: torch.Tensor, reduction: Reduction, key: int, out_dtype: torch.dtype):
    """a (M, K) @ b (K, N) under `reduction`; `key` is the splitk call key (ignored otherwise)."""
    m, k = a.shape
    n = b.shape[1]
    if k == 0 or m == 0 or n == 0:
        return torch.zeros(m, n, dtype=out_dtype, device=a.device)
    partials = chunk_partials(a, b, reduction)
    if reduction.splits == 1 or reduction.mode == "fixed":
        return sum_in_order(partials).to(out_dtype)
    if reduction.mode == "atomic":
        key = secrets.randbits(32)
    return sum_in_splitk_order(partials, key, reduction.granularity).to(out_dtype)
