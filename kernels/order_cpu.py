"""The chunk partials of one block of a GEMM output added in their order (emulate backend).

A block holds the (splits, A, B, C) chunk partials of some elements of a GEMM output; its
`Placement` says which: element (a, b, c) is the output's (m, n) with m = m0 + a*ma + b*mb +
c*mc and n = n0 + a*na + b*nb + c*nc (a tile of rows and columns, or a run of images of a
convolution laid out as (channel, image, pixel) or (image, channel, pixel)).
`reduce_block` adds them as kernels.order defines it: in index order (fixed mode), in one order
for every element (granularity "call"), or in each tile's or element's own order. The
per-element orders are applied by a compiled pass (kernels.loops_cpu; GIL released, serial: one
block per worker of kernels.workers_emulate) that hashes each element and adds its partials in
its order (fp32, fp64), or gathers them into their order on the raw bits (fp16, bf16) for torch
to add position by position with one rounding per addition. Off the CPU,
kernels.order.chunk_order gives the same orders. `partials_arrays`, `partials_buffer` and
`batched_partials` lay a block's partials out for the compiled pass: each chunk's plane
contiguous, wide ones with a gap between planes; `compiled_matmul_applies` says where a compiled
call may form them as torch.bmm does.
"""
from __future__ import annotations

import functools
import math
import threading
from typing import NamedTuple

import numpy as np
import torch

from .formats import add_rounded
from .loops_cpu import (MKL_GEMM, batched_matmul, compiled_permutation_table, gather_block_in_order,
                        sum_block_in_order)
from .order import GRANULARITY_CODES, MASK32, ORDER_TILE, chunk_order
from .workers_emulate import ieee_fp32, numpy_dtype, one_thread, scratch

_BIT_VIEWS = {8: torch.int64, 4: torch.int32, 2: torch.int16}
# Formats whose additions numba performs in the format itself (IEEE, round to nearest even).
SUMMABLE_DTYPES = (torch.float32, torch.float64)
NARROW_INDEX_LIMIT = 2**32
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
                    self._table = compiled_permutation_table(self.key, self.splits)
                offset = index_dtype(self.splits * plane)
                self._starts[plane] = self._table.astype(offset) * offset(plane)
            return self._starts[plane]


def _wide(splits: int, plane: int) -> bool:
    """Whether partials of `splits` planes of `plane` elements get gapped planes (see GAP_SPLITS)."""
    return splits > GAP_SPLITS and plane >= GAP_PLANE


class Partials(NamedTuple):
    """Empty memory for chunk partials: `planes` (splits, *shape), each contiguous, lying in
    `flat` at offsets s * `plane`."""

    planes: np.ndarray
    flat: np.ndarray
    plane: int


def partials_arrays(splits: int, shape: tuple, dtype: torch.dtype, within_block: bool = False) -> Partials:
    """Memory for (splits, *shape) chunk partials, that reduce_block reads in place. Wide partials
    (see GAP_SPLITS) have gapped planes and, used `within_block` (done with before the block of
    work ends), lie in this thread's scratch memory (kernels.workers_emulate.scratch): the 32-chunk
    step ran 9 % faster than with fresh memory. Narrower ones are fresh memory, returned between
    calls: no slower, and the 8-chunk step's peak memory stays at its bound."""
    plane, item = math.prod(shape), numpy_dtype(dtype)
    if not _wide(splits, plane):
        flat = np.empty(splits * plane, item)
        return Partials(flat.reshape(splits, *shape), flat, plane)
    step = plane + PLANE_GAP_BYTES // item.itemsize
    flat = (scratch(splits * step * item.itemsize).view(item) if within_block else np.empty(splits * step, item))
    inner = [item.itemsize * math.prod(shape[d + 1:]) for d in range(len(shape))]
    return Partials(np.lib.stride_tricks.as_strided(flat, (splits, *shape), (step * item.itemsize, *inner)), flat, step)


def partials_buffer(splits: int, shape: tuple, dtype: torch.dtype, within_block: bool = False) -> torch.Tensor:
    """partials_arrays' planes as a CPU tensor."""
    return torch.from_numpy(partials_arrays(splits, shape, dtype, within_block).planes)


def batched_partials(left: torch.Tensor, right: torch.Tensor, within_block: bool = False) -> torch.Tensor:
    """torch.bmm(left, right), the (splits, M, N) chunk products, wide ones in a partials_buffer.
    Narrower ones are bmm's own result: writing into a given tensor made the 8-chunk step 7 %
    slower."""
    splits, rows, cols = left.shape[0], left.shape[1], right.shape[2]
    if not _wide(splits, rows * cols):
        return torch.bmm(left, right)
    return torch.bmm(left, right, out=partials_buffer(splits, (rows, cols), left.dtype, within_block))


def compiled_matmul_applies(left: torch.Tensor, cols: int) -> bool:
    """Whether loops_cpu.batched_matmul gives the bits of batched_partials(left, right) for a
    contiguous right operand (splits, K, cols), into a partials_buffer: fp32, a left operand
    with unit column strides, and the two compared once for its shape and strides on random
    operands (torch.bmm multiplies tiny products with its own loops)."""
    return (MKL_GEMM and left.dtype == torch.float32 and left.stride(2) == 1
            and _compiled_matmul_matches(tuple(left.shape), tuple(left.stride()), cols))


@functools.lru_cache(maxsize=None)
def _compiled_matmul_matches(shape: tuple, strides: tuple, cols: int) -> bool:
    """The comparison, with torch set as the blocks set it (one thread, IEEE fp32)."""
    generator = torch.Generator().manual_seed(shape[0] * cols)
    span = 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))
    left = torch.randn(span, generator=generator).as_strided(shape, strides)
    right = torch.randn(shape[0], shape[2], cols, generator=generator)
    product = partials_buffer(shape[0], (shape[1], cols), torch.float32)
    with one_thread(), ieee_fp32():
        batched_matmul(left.numpy(), right.numpy(), product.numpy())
        return torch.equal(product, batched_partials(left, right))


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


def in_order_arguments(flat: np.ndarray, plane: int, shape: tuple, out: np.ndarray, order: BlockOrder,
                       place: Placement) -> tuple:
    """The arguments (flat partials, plane offsets, where, out) of the compiled passes
    (sum_block_in_order, gather_block_in_order) for partials of blocks shaped `shape` (A, B, C) lying in
    `flat` `plane` elements apart; a contiguous `out` is passed as one line (1, 1, A*B*C)."""
    where = (shape, np.uint32(order.key), GRANULARITY_CODES[order.granularity],
             np.array(place.rows, dtype=np.int64), np.array(place.cols, dtype=np.int64), order.n_total)
    if out.flags.c_contiguous:
        out = out.reshape(*out.shape[:-3], 1, 1, -1)
    return flat, order.starts(plane), where, out


def _compiled(kernel, partials: torch.Tensor, out: np.ndarray, order: BlockOrder, place: Placement) -> None:
    """Run `kernel` (sum_block_in_order, gather_block_in_order) on `partials` (splits, A, B, C; each plane
    contiguous) into `out`."""
    kernel(*in_order_arguments(_flat(partials), partials.stride(0), tuple(partials.shape[1:]), out, order, place))


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
        _compiled(sum_block_in_order, _planes(partials), out.numpy(), order, place)
    elif partials.dtype in SUMMABLE_DTYPES:  # then rounded once into out's dtype
        target = np.empty(out.shape, numpy_dtype(partials.dtype))
        _compiled(sum_block_in_order, _planes(partials), target, order, place)
        out.copy_(torch.from_numpy(target))
    else:
        bits = _planes(partials).view(_BIT_VIEWS[partials.element_size()])
        ordered = torch.empty(partials.shape, dtype=bits.dtype)
        _compiled(gather_block_in_order, bits, ordered.numpy(), order, place)
        _add_in_sequence(ordered.view(partials.dtype), order.sequence, out)
