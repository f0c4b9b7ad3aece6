"""The chunk partials of one block of a GEMM output added in their order (emulate backend).

A block holds the (splits, A, B, C) chunk partials of some elements of a GEMM output; its
`Placement` says which: element (a, b, c) is the output's (m, n) with m = m0 + a*ma + b*mb +
c*mc and n = n0 + a*na + b*nb + c*nc (a tile of rows and columns, or a run of images of a
convolution laid out as (channel, image, pixel) or (image, channel, pixel)).
`reduce_block` adds them as kernels.order defines it: in index order (fixed mode), in one order
for every element (granularity "call"), or in each tile's or element's own order. The
per-element orders are applied by a compiled pass (numba, GIL released, serial: one block per
worker of kernels.workers_emulate) that hashes each element and adds its partials in its order
(fp32, fp64), or gathers them into their order on the raw bits (fp16, bf16) for torch to add
position by position with one rounding per addition. Off the CPU, kernels.order.chunk_order
gives the same orders. `partials_buffer` and `batched_partials` lay a block's partials out for
the compiled pass: each chunk's plane contiguous, wide ones with a gap between planes.
"""
from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numba
import numpy as np
import torch

from .formats import add_rounded
from .order import (FMIX_C1, FMIX_C2, GOLDEN, GRANULARITY_CODES, MASK32, ORDER_TILE, PERMUTATIONS,
                    chunk_order)
from .workers_emulate import fresh, numpy_dtype, scratch

_BIT_VIEWS = {8: torch.int64, 4: torch.int32, 2: torch.int16}
# Formats whose additions numba performs in the format itself (IEEE, round to nearest even).
SUMMABLE_DTYPES = (torch.float32, torch.float64)
COUNTING_SORT_MAX = 512  # permutation rows up to this long are ranked by counting, longer ones by argsort


NARROW_INDEX_LIMIT = 2**32
SIDE_BY_SIDE = 8  # elements whose ordered sums _sum_block runs together
# Wide partials (more than GAP_SPLITS chunks, planes of GAP_PLANE elements or more) get a gap of
# PLANE_GAP_BYTES, an odd number of cache lines, about half a page, between their planes. Planes a
# multiple of 4 KiB apart share cache sets, and 32 of them thrash a core's L1 cache: with the gap
# the 32-chunk ordered sum ran 1.7x faster. A batched matmul writing into gapped planes costs
# about 1.2 us more per chunk, and 8 chunks summed as fast without, so narrower ones get none.
PLANE_GAP_BYTES = 33 * 64
GAP_SPLITS = 8
GAP_PLANE = 4096


def index_dtype(limit: int) -> type:
    """The unsigned type the compiled loops index with, for indices below `limit`: uint32 where it
    fits, as the narrower tables stay in cache, else uint64. Unsigned, the loops index without
    the checks for negative indices (1.2-1.7x faster gathers and additions)."""
    return np.uint32 if limit <= NARROW_INDEX_LIMIT else np.uint64


class Placement(NamedTuple):
    """Where block element (a, b, c) lies in the GEMM output: m = rows . (1, a, b, c), n = cols . (1, a, b, c)."""

    rows: tuple[int, int, int, int]
    cols: tuple[int, int, int, int]


class BlockOrder:
    """The order of one call over a GEMM output `n_total` wide: fixed (key None) or seeded by `key`.

    Per-element orders read the call's permutation table, built by the first block that adds
    its partials: while it builds, the other blocks of the call are still forming theirs (with
    32 chunks the table takes about 40 us, a few per cent of a training step on the caller).
    """

    def __init__(self, splits: int, key: int | None, granularity: str, n_total: int):
        self.splits, self.key, self.granularity, self.n_total = splits, key, granularity, n_total
        self.per_element = key is not None and granularity != "call" and splits > 1
        if self.per_element:
            self._table: np.ndarray | None = None
            self._starts: dict[int, np.ndarray] = {}
            self._lock = threading.Lock()
            self.sequence = list(range(splits))  # of the partials once gathered into their order
        elif key is None:
            self.sequence = list(range(splits))
        else:
            self.sequence = chunk_order(key, torch.zeros(1, dtype=torch.int64), splits).view(-1).tolist()

    def starts(self, plane: int) -> np.ndarray:
        """The table as offsets of planes `plane` elements apart (the blocks of a call share a few)."""
        with self._lock:
            if plane not in self._starts:
                if self._table is None:
                    self._table = _permutation_table(self.key, self.splits)
                offset = index_dtype(self.splits * plane)
                self._starts[plane] = self._table.astype(offset) * offset(plane)
            return self._starts[plane]


def _wide(splits: int, plane: int) -> bool:
    """Whether partials of `splits` planes of `plane` elements get gapped planes (see GAP_SPLITS)."""
    return splits > GAP_SPLITS and plane >= GAP_PLANE


def partials_buffer(splits: int, shape: tuple, dtype: torch.dtype, within_block: bool = False) -> torch.Tensor:
    """An empty (splits, *shape) CPU tensor for chunk partials, each plane contiguous, that
    reduce_block reads in place. Wide partials (see GAP_SPLITS) have gapped planes and, used
    `within_block` (done with before the block of work ends), lie in this thread's scratch memory
    (kernels.workers_emulate.scratch): the 32-chunk step ran 9 % faster than with fresh memory.
    Narrower ones are fresh memory, returned between calls: no slower, and the 8-chunk step's
    peak memory stays at its bound."""
    plane = math.prod(shape)
    wide = _wide(splits, plane)
    if not wide:
        return fresh((splits, *shape), dtype)
    item = dtype.itemsize
    step = plane + PLANE_GAP_BYTES // item
    storage = (scratch(splits * step * item).view(numpy_dtype(dtype)) if within_block
               else np.empty(splits * step, numpy_dtype(dtype)))
    inner = [item * math.prod(shape[d + 1:]) for d in range(len(shape))]
    return torch.from_numpy(np.lib.stride_tricks.as_strided(storage, (splits, *shape), (step * item, *inner)))


def batched_partials(left: torch.Tensor, right: torch.Tensor, within_block: bool = False) -> torch.Tensor:
    """torch.bmm(left, right), the (splits, M, N) chunk products, wide ones in a partials_buffer.
    Narrower ones are bmm's own result: writing into a given tensor made the 8-chunk step 7 %
    slower."""
    splits, rows, cols = left.shape[0], left.shape[1], right.shape[2]
    if not _wide(splits, rows * cols):
        return torch.bmm(left, right)
    return torch.bmm(left, right, out=partials_buffer(splits, (rows, cols), left.dtype, within_block))


def _planes(partials: torch.Tensor) -> torch.Tensor:
    """`partials` itself where its planes lie as in a partials_buffer (each contiguous, the next
    at most PLANE_GAP_BYTES after its end), else a contiguous copy: the ordered sum reading
    planes far apart in place (rows of larger planes) made the 8-chunk step 7 % slower."""
    plane, gap = partials[0], PLANE_GAP_BYTES // partials.element_size()
    if plane.is_contiguous() and (partials.shape[0] == 1 or 0 <= partials.stride(0) - plane.numel() <= gap):
        return partials
    return partials.contiguous()


def _flat(partials: torch.Tensor) -> np.ndarray:
    """The storage that `partials` (planes contiguous) spans, as a flat array from its first element."""
    span = (partials.shape[0] - 1) * partials.stride(0) + partials[0].numel()
    return np.lib.stride_tricks.as_strided(partials.numpy(), (span,), (partials.element_size(),))


@numba.njit(cache=True, inline="always")
def _fmix32(x):  # pragma: no cover - compiled
    """kernels.order.fmix32 on a uint32."""
    x ^= x >> np.uint32(16)
    x = np.uint32(x * np.uint32(FMIX_C1))
    x ^= x >> np.uint32(13)
    x = np.uint32(x * np.uint32(FMIX_C2))
    return x ^ (x >> np.uint32(16))


@numba.njit(cache=True)
def _permutation_table(key, splits):  # pragma: no cover - compiled
    """kernels.order.permutation_table, as int32: each row sorts the chunk ids by (rank, id)."""
    table = np.empty((PERMUTATIONS, splits), dtype=np.int32)
    ranks = np.empty(splits, dtype=np.int64)
    for t in range(PERMUTATIONS):
        row_salt = _fmix32(np.uint32(key) ^ np.uint32(((t + 1) * GOLDEN) & MASK32))
        for s in range(splits):
            ranks[s] = np.int64(_fmix32(row_salt ^ np.uint32((s * GOLDEN) & MASK32))) * splits + s
        if splits > COUNTING_SORT_MAX:
            table[t] = np.argsort(ranks)
            continue
        for s in range(splits):  # the ranks are distinct: s goes where the smaller ones end
            place = 0
            for other in range(splits):
                place += ranks[other] < ranks[s]
            table[t, place] = s
    return table


@numba.njit(cache=True, nogil=True)
def _table_rows(shape, key, granularity, rows, cols, n_total):  # pragma: no cover - compiled
    """Row of the permutation table that orders each element (a, b, c) of an (A, B, C) block
    (kernels.order), a pass of its own, which the compiler vectorises, rather than a hash inside
    the additions' loop. Along c the element's order index (m * n_total + n, modulo 2**32) grows
    by a fixed step, so the inner loop is one multiply-add and the hash."""
    table_rows = np.empty(shape, dtype=np.uint8)
    tiles_n = (n_total + ORDER_TILE - 1) // ORDER_TILE
    for a in range(shape[0]):
        for b in range(shape[1]):
            m0 = rows[0] + a * rows[1] + b * rows[2]
            n0 = cols[0] + a * cols[1] + b * cols[2]
            line = table_rows[a, b]
            if granularity == 1:
                for c in range(shape[2]):
                    index = ((m0 + c * rows[3]) // ORDER_TILE) * tiles_n + (n0 + c * cols[3]) // ORDER_TILE
                    line[c] = _fmix32(np.uint32(index & MASK32) ^ key) % np.uint32(PERMUTATIONS)
                continue
            base = np.uint32((m0 * n_total + n0) & MASK32)
            step = np.uint32((rows[3] * n_total + cols[3]) & MASK32)
            for c in range(shape[2]):
                line[c] = _fmix32(np.uint32(base + np.uint32(c) * step) ^ key) % np.uint32(PERMUTATIONS)
    return table_rows


@numba.njit(cache=True, nogil=True, inline="always")
def _term(partials, offsets, position, element):  # pragma: no cover - compiled
    """The partial of the flat `element` that its order adds at `position`."""
    return partials[offsets[position] + np.uint64(element)]


@numba.njit(cache=True, nogil=True)
def _sum_block(partials, starts, table_rows, out):  # pragma: no cover - compiled
    """out[a, b, c]: element (a, b, c)'s partials added in its order. `partials` is the flat
    storage of the (splits, A, B, C) partials and starts[row] the offsets of their planes in
    row's order, so each addition is one load at a precomputed offset. One element's additions
    form a chain, each waiting on the one before; SIDE_BY_SIDE (8) elements along c are summed
    together, each in its own order as before, so that their chains overlap (training steps
    with 8 and 32 chunks ran 0-9 % faster)."""
    extent_a, extent_b, extent_c = out.shape
    splits = starts.shape[1]
    side_by_side = extent_c - extent_c % SIDE_BY_SIDE
    element = 0
    for a in range(extent_a):
        for b in range(extent_b):
            rows, line = table_rows[a, b], out[a, b]
            for c in range(0, side_by_side, SIDE_BY_SIDE):
                e = element + c
                o0, o1, o2, o3 = starts[rows[c]], starts[rows[c + 1]], starts[rows[c + 2]], starts[rows[c + 3]]
                o4, o5, o6, o7 = starts[rows[c + 4]], starts[rows[c + 5]], starts[rows[c + 6]], starts[rows[c + 7]]
                s0, s1, s2, s3 = (_term(partials, o0, 0, e), _term(partials, o1, 0, e + 1),
                                  _term(partials, o2, 0, e + 2), _term(partials, o3, 0, e + 3))
                s4, s5, s6, s7 = (_term(partials, o4, 0, e + 4), _term(partials, o5, 0, e + 5),
                                  _term(partials, o6, 0, e + 6), _term(partials, o7, 0, e + 7))
                for p in range(1, splits):
                    s0 += _term(partials, o0, p, e)
                    s1 += _term(partials, o1, p, e + 1)
                    s2 += _term(partials, o2, p, e + 2)
                    s3 += _term(partials, o3, p, e + 3)
                    s4 += _term(partials, o4, p, e + 4)
                    s5 += _term(partials, o5, p, e + 5)
                    s6 += _term(partials, o6, p, e + 6)
                    s7 += _term(partials, o7, p, e + 7)
                line[c], line[c + 1], line[c + 2], line[c + 3] = s0, s1, s2, s3
                line[c + 4], line[c + 5], line[c + 6], line[c + 7] = s4, s5, s6, s7
            for c in range(side_by_side, extent_c):
                offsets = starts[rows[c]]
                running = _term(partials, offsets, 0, element + c)
                for p in range(1, splits):
                    running += _term(partials, offsets, p, element + c)
                line[c] = running
            element += extent_c


@numba.njit(cache=True, nogil=True)
def _gather_block(partials, starts, table_rows, out):  # pragma: no cover - compiled
    """out[position, a, b, c]: element (a, b, c)'s partials in its order (flat partials and plane
    offsets as for _sum_block)."""
    extent_a, extent_b, extent_c = table_rows.shape
    splits = starts.shape[1]
    element = np.uint64(0)
    for a in range(extent_a):
        for b in range(extent_b):
            for c in range(extent_c):
                offsets = starts[table_rows[a, b, c]]
                for position in range(splits):
                    out[position, a, b, c] = partials[offsets[position] + element]
                element += np.uint64(1)


@numba.njit(cache=True, nogil=True)
def _sum_in_order(partials, starts, where, out):  # pragma: no cover - compiled
    """_sum_block with the table rows of the elements `where` (_table_rows' arguments): one
    compiled call, which lets the GIL go once. An `out` with lines shorter than SIDE_BY_SIDE
    (any strides) is summed as one contiguous line, then copied into place."""
    table_rows = _table_rows(*where)
    if out.shape[2] >= SIDE_BY_SIDE:
        _sum_block(partials, starts, table_rows.reshape(out.shape), out)
        return
    line = np.empty((1, 1, out.size), dtype=out.dtype)
    _sum_block(partials, starts, table_rows.reshape(line.shape), line)
    out[:, :, :] = line.reshape(out.shape)


@numba.njit(cache=True, nogil=True)
def _gather_in_order(partials, starts, where, out):  # pragma: no cover - compiled
    """_gather_block with the table rows of the elements `where` laid out as out[0], in one call."""
    _gather_block(partials, starts, _table_rows(*where).reshape(out.shape[1:]), out)


def _block_index(shape, place: Placement, order: BlockOrder, device) -> torch.Tensor:
    """Order index (kernels.order) of every element of an (A, B, C) block, as int64."""
    axes = [torch.arange(size, dtype=torch.int64, device=device).view([-1 if i == d else 1 for i in range(3)])
            for d, size in enumerate(shape)]
    m = place.rows[0] + sum(step * axis for step, axis in zip(place.rows[1:], axes))
    n = place.cols[0] + sum(step * axis for step, axis in zip(place.cols[1:], axes))
    if order.granularity == "tile":
        return (m // ORDER_TILE) * -(-order.n_total // ORDER_TILE) + n // ORDER_TILE
    return (m * order.n_total + n) & MASK32


def _add_in_sequence(partials: torch.Tensor, sequence: list[int], out: torch.Tensor) -> None:
    """out = (partials[s0] + partials[s1]) + partials[s2] + ..., each sum rounded to the partials' dtype."""
    if len(sequence) == 1:
        out.copy_(partials[sequence[0]])
        return
    total = partials[sequence[0]].clone()
    for s in sequence[1:]:
        if total.dtype in SUMMABLE_DTYPES:
            total += partials[s]
        else:
            total = add_rounded(total, partials[s])
    out.copy_(total)


def _compiled(kernel, partials: torch.Tensor, out: np.ndarray, order: BlockOrder, place: Placement) -> None:
    """Run `kernel` (_sum_in_order, _gather_in_order) on `partials` (splits, A, B, C; each plane
    contiguous); a contiguous `out` is passed as one line (A, B, C) = (1, 1, A*B*C)."""
    where = (tuple(partials.shape[1:]), np.uint32(order.key), GRANULARITY_CODES[order.granularity],
             np.array(place.rows, dtype=np.int64), np.array(place.cols, dtype=np.int64), order.n_total)
    if out.flags.c_contiguous:
        out = out.reshape(*out.shape[:-3], 1, 1, -1)
    kernel(_flat(partials), order.starts(partials.stride(0)), where, out)


def reduce_block(partials: torch.Tensor, out: torch.Tensor, order: BlockOrder, place: Placement) -> None:
    """Write into `out` (A, B, C) the sum of `partials` (splits, A, B, C) in each element's order.

    Partials are in the accumulate dtype, best each plane contiguous (partials_buffer); `out` may
    have another dtype (one final rounding) and any strides; `place` locates the block in the
    GEMM output.
    """
    if not order.per_element:
        _add_in_sequence(partials, order.sequence, out)
    elif partials.device.type != "cpu":
        ids = chunk_order(order.key, _block_index(out.shape, place, order, out.device), order.splits)
        _add_in_sequence(torch.gather(partials, 0, ids), order.sequence, out)
    elif partials.dtype in SUMMABLE_DTYPES and out.dtype == partials.dtype:
        _compiled(_sum_in_order, _planes(partials), out.numpy(), order, place)
    elif partials.dtype in SUMMABLE_DTYPES:  # then rounded once into out's dtype
        target = np.empty(out.shape, numpy_dtype(partials.dtype))
        _compiled(_sum_in_order, _planes(partials), target, order, place)
        out.copy_(torch.from_numpy(target))
    else:
        bits = _planes(partials).view(_BIT_VIEWS[partials.element_size()])
        ordered = torch.empty(partials.shape, dtype=bits.dtype)
        _compiled(_gather_in_order, bits, ordered.numpy(), order, place)
        _add_in_sequence(ordered.view(partials.dtype), order.sequence, out)
