"""The emulate backend: the GEMM's reduction order in pure torch (CPU default, test oracle).

Within a chunk, torch's own matmul forms the fp32 (or fp64) dot products, as the tensor cores do
inside a Triton tile; chunk boundaries, operand rounding, partial-sum dtype and the order in
which chunk partials are added follow kernels.order exactly, so emulate and Triton agree on
everything but the order inside a chunk.

On the CPU the output is cut into tiles whose shape depends on the problem alone; each tile's
chunk products are single-threaded matmuls, its partials stay in cache and are added in their
order at once (kernels.order_cpu), and the tiles run in parallel on kernels.workers_emulate.
So the order inside a chunk is fixed too, by the tile shape, and no bit depends on the number
of threads. Other devices form all partials at once and order them with torch.

Atomic mode on this backend is emulated: chunk partials are added in a pseudo-random order
drawn from OS entropy on every call (per element, tile or call as the granularity says), which
models the arrival order of atomic adds; it is not reproducible, by design.
"""
from __future__ import annotations

import secrets

import torch

from .formats import ACCUMULATE_DTYPES, add_rounded, round_operand
from .order import chunk_bounds, chunk_order, order_index
from .order_cpu import BlockOrder, Placement, batched_partials, partials_buffer, reduce_block
from .reduction import Reduction
from .workers_emulate import in_dtype, run_blocks, threads_to_workers

TILE_ROWS, TILE_COLS = 256, 512  # largest tile: enough tiles to share, b's column slice stays in cache
TILE_BYTES = 1 << 21  # the chunk partials of one tile fit in one core's L2 cache
TILE_MIN_PRODUCTS = 1 << 22  # a tile of fewer multiply-adds costs more to hand out than to compute


def chunk_partials(a: torch.Tensor, b: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Partial products of each K chunk, rounded to the accumulate dtype: (splits, M, N)."""
    a, b = round_operand(a, reduction.precision), round_operand(b, reduction.precision)
    acc_dtype = ACCUMULATE_DTYPES[reduction.accumulate]
    partials = torch.empty(reduction.splits, a.shape[0], b.shape[1], dtype=acc_dtype, device=a.device)
    for s, (lo, hi) in enumerate(chunk_bounds(a.shape[1], reduction.splits)):
        partials[s] = a[:, lo:hi] @ b[lo:hi]
    return partials


def sum_in_order(partials: torch.Tensor) -> torch.Tensor:
    """Add partials[0] + partials[1] + ... left to right, rounding each sum to their dtype."""
    total = partials[0]
    for term in partials[1:]:
        total = add_rounded(total, term)
    return total


def ordered_partials(partials: torch.Tensor, key: int, granularity: str) -> torch.Tensor:
    """The partials rearranged so that position 0 along dim 0 is added first."""
    splits, m, n = partials.shape
    order = chunk_order(key, order_index(m, n, granularity, partials.device), splits)
    if granularity == "call":
        return partials[order.view(-1)]
    return torch.gather(partials, 0, order)


def call_key(reduction: Reduction, key: int) -> int | None:
    """The key the call's order is drawn from: None for fixed, fresh OS entropy for atomic."""
    if reduction.mode == "fixed" or reduction.splits == 1:
        return None
    return secrets.randbits(32) if reduction.mode == "atomic" else key


def output_tiles(m: int, n: int, k: int, stored: int) -> list[tuple[int, int, int, int]]:
    """(row, row end, column, column end) of each tile of an (m, n) output reducing over k.

    A function of the shape alone (and of `stored`, the partials a tile holds at once), never
    of the thread count.
    """
    cols = min(n, TILE_COLS)
    rows = max(1, min(m, TILE_ROWS, TILE_BYTES // (4 * stored * cols)))
    while rows * cols * k < TILE_MIN_PRODUCTS and (rows < m or cols < n):
        rows, cols = (min(m, 2 * rows), cols) if rows < m else (rows, min(n, 2 * cols))
    return [(r, min(r + rows, m), c, min(c + cols, n)) for r in range(0, m, rows) for c in range(0, n, cols)]


def tile_blocks(a, b, reduction: Reduction, order: BlockOrder, out: torch.Tensor) -> list:
    """The tiled CPU path as blocks of work for kernels.workers_emulate: each forms one tile's
    partials of a (M, K) @ b (K, N) (contiguous, rounded) and adds them in their order into `out`."""
    (m, k), n = a.shape, b.shape[1]
    bounds = chunk_bounds(k, reduction.splits)
    acc_dtype = ACCUMULATE_DTYPES[reduction.accumulate]
    direct = len(bounds) == 1 and out.dtype == acc_dtype == a.dtype

    equal = k % len(bounds) == 0  # equal chunks: one batched matmul over these views
    a_chunks = a.view(m, len(bounds), -1).transpose(0, 1) if equal else None
    b_chunks = b.view(len(bounds), -1, n) if equal else None

    def tile(r0, r1, c0, c1):
        if direct:
            torch.mm(a[r0:r1], b[:, c0:c1], out=out[r0:r1, c0:c1])
            return
        if equal:
            partials = batched_partials(a_chunks[:, r0:r1], b_chunks[:, :, c0:c1], within_block=True)
        else:
            partials = partials_buffer(len(bounds), (r1 - r0, c1 - c0), a.dtype, within_block=True)
            for s, (lo, hi) in enumerate(bounds):
                torch.mm(a[r0:r1, lo:hi], b[lo:hi, c0:c1], out=partials[s])
        reduce_block(in_dtype(partials, acc_dtype)[:, None], out[None, r0:r1, c0:c1], order,
                     Placement((r0, 0, 1, 0), (c0, 0, 0, 1)))

    stored = 0 if direct else len(bounds) + (acc_dtype != a.dtype)
    return [lambda t=t: tile(*t) for t in output_tiles(m, n, k, max(stored, 1))]


def gemm(a: torch.Tensor, b: torch.Tensor, reduction: Reduction, key: int, out_dtype: torch.dtype):
    """a (M, K) @ b (K, N) under `reduction`; `key` is the splitk call key (ignored otherwise)."""
    m, k = a.shape
    n = b.shape[1]
    if k == 0 or m == 0 or n == 0:
        return torch.zeros(m, n, dtype=out_dtype, device=a.device)
    key = call_key(reduction, key)
    if a.device.type != "cpu":
        partials = chunk_partials(a, b, reduction)
        if key is not None:
            partials = ordered_partials(partials, key, reduction.granularity)
        return sum_in_order(partials).to(out_dtype)
    with threads_to_workers():
        a = round_operand(a, reduction.precision).contiguous()
        b = round_operand(b, reduction.precision).contiguous()
        out = torch.empty(m, n, dtype=out_dtype)
        run_blocks(tile_blocks(a, b, reduction, BlockOrder(reduction.splits, key, reduction.granularity, n), out))
    return out
