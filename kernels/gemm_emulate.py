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
    return _chunk_products(round_operand(a, reduction.precision), round_operand(b, reduction.precision), reduction)


def _chunk_products(a: torch.Tensor, b: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """chunk_partials of operands already rounded to the reduction's precision."""
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


# Partials of one row block of the compiled CPU path: small enough to stay in cache (and to be
# reused by the allocator instead of freshly mapped memory for every call).
ROW_BLOCK_BYTES = 4 << 20


def _splitk_on_cpu_in_row_blocks(a: torch.Tensor, b: torch.Tensor, reduction: Reduction, key: int) -> torch.Tensor:
    """CPU splitk with fp32/fp64 partials: each row block's partials ordered and added in one compiled pass."""
    m, n = a.shape[0], b.shape[1]
    a = round_operand(a, reduction.precision)
    b = round_operand(b, reduction.precision)
    acc_dtype = ACCUMULATE_DTYPES[reduction.accumulate]
    rows = max(1, ROW_BLOCK_BYTES // (reduction.splits * n * acc_dtype.itemsize))
    out = torch.empty(m, n, dtype=acc_dtype)
    for first in range(0, m, rows):
        partials = _chunk_products(a[first:first + rows], b, reduction)
        out[first:first + rows] = order_cpu.sum_in_order(partials, key, reduction.granularity, first_row=first)
    return out


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
    if reduction.splits == 1 or reduction.mode == "fixed":
        return sum_in_order(chunk_partials(a, b, reduction)).to(out_dtype)
    if reduction.mode == "atomic":
        key = secrets.randbits(32)
    fused = a.device.type == "cpu" and reduction.granularity != "call" and \
        ACCUMULATE_DTYPES[reduction.accumulate] in order_cpu.SUMMABLE_DTYPES
    if fused:
        return _splitk_on_cpu_in_row_blocks(a, b, reduction, key).to(out_dtype)
    partials = chunk_partials(a, b, reduction)
    return sum_in_order(ordered_partials(partials, key, reduction.granularity)).to(out_dtype)
