"""The splitk order applied on CPU in one compiled pass (numba), for the emulate backend.

`kernels.order.chunk_order` materialises every element's order as an int64 tensor, which costs
more than the GEMM itself on a CPU; this pass hashes each element once and gathers its chunk
partials straight into summation order. It works on the raw bits of the partials, so one
compiled loop serves fp64, fp32, fp16 and bf16, and it is tested bit for bit against
`chunk_order`. For fp32 and fp64 partials the pass also adds them, in the order, as it goes.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from .order import GRANULARITY_CODES, ORDER_TILE, PERMUTATIONS, permutation_table

_BIT_VIEWS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


PARALLEL_MIN_ELEMENTS = 1 << 16  # below this, starting threads costs more than the loop


@numba.njit(cache=True, inline="always")
def _order_row(e, key, n_cols, granularity, first_row):  # pragma: no cover - compiled
    """Row of the permutation table that orders element e of a block of an (M, n_cols) output.

    e is the flat index within the block, whose first row is the output's row `first_row`.
    """
    index = np.int64(e) + np.int64(first_row) * n_cols
    if granularity == 0:
        index = np.int64(0)
    elif granularity == 1:
        tiles_per_row = (n_cols + ORDER_TILE - 1) // ORDER_TILE
        index = (index // n_cols // ORDER_TILE) * tiles_per_row + (index % n_cols) // ORDER_TILE
    x = np.uint32(index & np.int64(0xFFFFFFFF)) ^ key
    x ^= x >> np.uint32(16)
    x = np.uint32(x * np.uint32(0x85EBCA6B))
    x ^= x >> np.uint32(13)
    x = np.uint32(x * np.uint32(0xC2B2AE35))
    x ^= x >> np.uint32(16)
    return x % np.uint32(PERMUTATIONS)


def _gather_loop(partials, table, key, n_cols, granularity, first_row, out):  # pragma: no cover - compiled
    splits, total = partials.shape
    for e in numba.prange(total):
        row = _order_row(e, key, n_cols, granularity, first_row)
        for position in range(splits):
            out[position, e] = partials[table[row, position], e]


def _sum_loop(partials, table, key, n_cols, granularity, first_row, out):  # pragma: no cover - compiled
    splits, total = partials.shape
    for e in numba.prange(total):
        row = _order_row(e, key, n_cols, granularity, first_row)
        running = partials[table[row, 0], e]
        for position in range(1, splits):
            running += partials[table[row, position], e]
        out[e] = running


def _serial_and_parallel(loop):
    return numba.njit(cache=True)(loop), numba.njit(parallel=True, cache=True)(loop)


_GATHER = _serial_and_parallel(_gather_loop)
_SUM = _serial_and_parallel(_sum_loop)
# Formats whose additions numba performs in the format itself (IEEE, round to nearest even).
SUMMABLE_DTYPES = (torch.float32, torch.float64)


def _run(compiled, array_in, array_out, partials_shape, key: int, granularity: str, first_row: int) -> None:
    splits, m, n = partials_shape
    table = permutation_table(key, splits).to(torch.int32).numpy()
    loop = compiled[1] if m * n >= PARALLEL_MIN_ELEMENTS else compiled[0]
    loop(array_in.numpy(), table, np.uint32(key), n, GRANULARITY_CODES[granularity], first_row, array_out.numpy())


def gather_in_order(partials: torch.Tensor, key: int, granularity: str) -> torch.Tensor:
    """CPU partials (splits, M, N) rearranged so that position 0 along dim 0 is added first."""
    splits, m, n = partials.shape
    bits = partials.contiguous().view(_BIT_VIEWS[partials.element_size()]).view(splits, m * n)
    out = torch.empty_like(bits)
    _run(_GATHER, bits, out, partials.shape, key, granularity, 0)
    return out.view(partials.dtype).view(splits, m, n)


def sum_in_order(partials: torch.Tensor, key: int, granularity: str, first_row: int = 0) -> torch.Tensor:
    """CPU fp32/fp64 partials (splits, M, N) added left to right in each element's order: (M, N).

    The same sums as gathering and then adding position by position, without the gathered copy.
    The partials may be rows first_row, first_row + 1, ... of a taller output (its orders apply).
    """
    if partials.dtype not in SUMMABLE_DTYPES:
        raise TypeError(f"partials.dtype={partials.dtype} is not allowed; use one of {SUMMABLE_DTYPES}")
    splits, m, n = partials.shape
    flat = partials.contiguous().view(splits, m * n)
    out = torch.empty(m * n, dtype=partials.dtype)
    _run(_SUM, flat, out, partials.shape, key, granularity, first_row)
    return out.view(m, n)
