"""The splitk order applied on CPU in one compiled pass (numba), for the emulate backend.

`kernels.order.chunk_order` materialises every element's order as an int64 tensor, which costs
more than the GEMM itself on a CPU; this pass hashes each element once and gathers its chunk
partials straight into summation order. It works on the raw bits of the partials, so one
compiled loop serves fp64, fp32, fp16 and bf16, and it is tested bit for bit against
`chunk_order`.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from .order import GRANULARITY_CODES, ORDER_TILE, PERMUTATIONS, permutation_table

_BIT_VIEWS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


PARALLEL_MIN_ELEMENTS = 1 << 16  # below this, starting threads costs more than the loop


def _gather_loop(partials, table, key, n_cols, granularity, out):  # pragma: no cover - compiled
    splits, total = partials.shape
    tiles_per_row = (n_cols + ORDER_TILE - 1) // ORDER_TILE
    for e in numba.prange(total):
        index = np.int64(e)
        if granularity == 0:
            index = np.int64(0)
        elif granularity == 1:
            index = (index // n_cols // ORDER_TILE) * tiles_per_row + (index % n_cols) // ORDER_TILE
        x = np.uint32(index & np.int64(0xFFFFFFFF)) ^ key
        x ^= x >> np.uint32(16)
        x = np.uint32(x * np.uint32(0x85EBCA6B))
        x ^= x >> np.uint32(13)
        x = np.uint32(x * np.uint32(0xC2B2AE35))
        x ^= x >> np.uint32(16)
        row = x % np.uint32(PERMUTATIONS)
        for position in range(splits):
            out[position, e] = partials[table[row, position], e]


_gather_serial = numba.njit(cache=True)(_gather_loop)
_gather_parallel = numba.njit(parallel=True, cache=True)(_gather_loop)


def gather_in_order(partials: torch.Tensor, key: int, granularity: str) -> torch.Tensor:
    """CPU partials (splits, M, N) rearranged so that position 0 along dim 0 is added first."""
    splits, m, n = partials.shape
    bits = partials.contiguous().view(_BIT_VIEWS[partials.element_size()]).view(splits, m * n)
    table = permutation_table(key, splits).to(torch.int32).numpy()
    out = torch.empty_like(bits)
    gather = _gather_parallel if m * n >= PARALLEL_MIN_ELEMENTS else _gather_serial
    gather(bits.numpy(), table, np.uint32(key), n, GRANULARITY_CODES[granularity], out.numpy())
    return out.view(partials.dtype).view(splits, m, n)
