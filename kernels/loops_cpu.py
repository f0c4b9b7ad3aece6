"""The emulate backend's compiled loops (numba), in one module.

numba caches each compiled function with the file it is defined in and recompiles it when that
file changes, not when a function it calls from another file does; a loop that calls another
therefore lives in the same file. What they do is described where they are used:
kernels.order_cpu (the ordered sums), kernels.operands_emulate (the operand gathers) and
kernels.conv_emulate (a split-K block of a convolution role in one call).

torch.bmm multiplies the fp32 batches the emulate backend forms with MKL's SGEMM_BATCH (torch's
own MKL; MKL_VERBOSE shows the call), one group, on the calling thread, and torch.mm a product
with MKL's SGEMM. `batched_matmul` and `piece_products` make those calls from compiled code, so
that a block can gather its operand, multiply its chunks (or pieces) and add its partials in one
call that lets the GIL go once (kernels.workers_emulate). They exist where torch's library
exports the routines (MKL_GEMM); callers compare their bits with torch's for each shape
and layout before they use them.
"""
from __future__ import annotations

import ctypes
import os

import llvmlite.binding as llvm
import numba
import numpy as np
import torch
from numba import types

from .order import FMIX_C1, FMIX_C2, GOLDEN, MASK32, ORDER_TILE, PERMUTATIONS

COUNTING_SORT_MAX = 512  # permutation rows up to this long are ranked by counting, longer ones by argsort
SIDE_BY_SIDE = 8  # elements whose ordered sums _sum_block runs together


def _torch_exports(path: str, *names: str) -> bool:
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return False
    return all(hasattr(library, name) for name in names)


_TORCH_CPU = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
MKL_GEMM = _torch_exports(_TORCH_CPU, "SGEMM", "SGEMM_BATCH")
if MKL_GEMM:  # its symbols, for the compiled code to be linked against by name (cached code too)
    llvm.load_library_permanently(_TORCH_CPU)
# MKL's Fortran interface: every argument by reference (pointer-sized integers here)
_SGEMM_BATCH = types.ExternalFunction("SGEMM_BATCH", types.void(*[types.intp] * 15))
_SGEMM = types.ExternalFunction("SGEMM", types.void(*[types.intp] * 13))


@numba.njit(cache=True, inline="always")
def _fmix32(x):  # pragma: no cover - compiled
    """kernels.order.fmix32 on a uint32."""
    x ^= x >> np.uint32(16)
    x = np.uint32(x * np.uint32(FMIX_C1))
    x ^= x >> np.uint32(13)
    x = np.uint32(x * np.uint32(FMIX_C2))
    return x ^ (x >> np.uint32(16))


@numba.njit(cache=True)
def compiled_permutation_table(key, splits):  # pragma: no cover - compiled
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
def sum_block_in_order(partials, starts, where, out):  # pragma: no cover - compiled
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
def gather_block_in_order(partials, starts, where, out):  # pragma: no cover - compiled
    """_gather_block with the table rows of the elements `where` laid out as out[0], in one call."""
    _gather_block(partials, starts, _table_rows(*where).reshape(out.shape[1:]), out)


@numba.njit(cache=True, inline="always")
def _source_position(t, tap, axis):  # pragma: no cover - compiled
    """Source position of target position t with tap `tap` along `axis`, or -1 where there is none."""
    target, source, scale, offset, sign, divisor = axis
    numerator = t * scale + offset + sign * tap
    if numerator < 0 or numerator % divisor != 0 or numerator // divisor >= source:
        return -1
    return numerator // divisor


@numba.njit(cache=True, nogil=True)
def tap_index(kh, kw, batch, rows, cols):  # pragma: no cover - compiled
    """For each tap (ky, kx) and target column (b, y, x): 1 + the source's flat (b, sy, sx), or 0
    (the zero kept in front of every source plane) where the tap reads nothing."""
    plane, targets = rows[1] * cols[1], rows[0] * cols[0]
    index = np.empty((kh * kw, batch * targets), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            line = index[ky * kw + kx]
            for y in range(rows[0]):
                sy = _source_position(y, ky, rows)
                for x in range(cols[0]):
                    sx = _source_position(x, kx, cols)
                    line[y * cols[0] + x] = 0 if sy < 0 or sx < 0 else 1 + sy * cols[1] + sx
            for b in range(1, batch):
                for j in range(targets):
                    line[b * targets + j] = line[j] + b * plane if line[j] > 0 else 0
    return index


@numba.njit(cache=True, nogil=True)
def gather_taps(source, index, targets, out):  # pragma: no cover - compiled
    """out[targets[c * taps + t], i] = plane(c)[index[t, i]], where plane(c) is a zero followed by
    channel c of every image of `source` (images, channels, pixels): one long gather per row of
    the operand from a plane that stays in cache; every row of `out` no target names is zero."""
    images, channels, pixels = source.shape
    taps = index.shape[0]
    plane = np.empty(1 + images * pixels, dtype=source.dtype)
    plane[0] = 0
    written = np.zeros(out.shape[0], dtype=np.bool_)
    for c in range(channels):
        for b in range(images):
            plane[1 + b * pixels:1 + (b + 1) * pixels] = source[b, c]
        for t in range(taps):
            row = targets[c * taps + t]
            line, positions, written[row] = out[row], index[t], True
            for i in range(line.shape[0]):
                line[i] = plane[positions[i]]
    for row in range(out.shape[0]):
        if not written[row]:
            out[row] = 0


@numba.njit(cache=True, nogil=True)
def batched_matmul(a, b, c):  # pragma: no cover - compiled
    """c[i] = a[i] @ b[i] for fp32 matrices with unit column strides, as torch.bmm computes it:
    MKL's column-major SGEMM_BATCH of c[i]^T = b[i]^T a[i]^T, one group of all i. Returns a
    value read from the call's arguments after it: the call reads them by address, which numba
    does not see, and it may free an array after its last use."""
    batch, rows, inner = a.shape
    sizes = np.empty(8, dtype=np.int32)  # m, n, k, lda, ldb, ldc of the call; one group of `batch`
    sizes[0], sizes[1], sizes[2] = b.shape[2], rows, inner
    sizes[3], sizes[4], sizes[5] = b.strides[1] // 4, a.strides[1] // 4, c.strides[1] // 4
    sizes[6], sizes[7] = 1, batch
    scalars = np.empty(2, dtype=np.float32)  # alpha, beta
    scalars[0], scalars[1] = 1.0, 0.0
    no_transpose = np.full(1, ord("N"), dtype=np.uint8)
    pointers = np.empty((3, batch), dtype=np.intp)
    for i in range(batch):
        pointers[0, i], pointers[1, i], pointers[2, i] = b[i].ctypes.data, a[i].ctypes.data, c[i].ctypes.data
    size, scalar, pointer = sizes.ctypes.data, scalars.ctypes.data, pointers.ctypes.data
    flag, word, row = no_transpose.ctypes.data, sizes.itemsize, pointers.strides[0]
    _SGEMM_BATCH(flag, flag, size, size + word, size + 2 * word, scalar, pointer, size + 3 * word, pointer + row,
                 size + 4 * word, scalar + scalars.itemsize, pointer + 2 * row, size + 5 * word, size + 6 * word,
                 size + 7 * word)
    return sizes[7] + no_transpose[0] + scalars[1] + pointers[2, batch - 1]


@numba.njit(cache=True, nogil=True)
def products_in_order(source, index, targets, chunks, operand, partials, flat, starts, where,
                       out):  # pragma: no cover - compiled
    """A split-K block of a convolution role in one call: the run's operand gathered into
    `operand` (gather_taps), its chunk products into `partials` (batched_matmul; `flat` is
    their storage as sum_block_in_order reads it) and their sums in each element's order into `out`."""
    gather_taps(source, index, targets, operand.reshape(operand.shape[0] * operand.shape[1], operand.shape[2]))
    batched_matmul(chunks, operand, partials)
    sum_block_in_order(flat, starts, where, out)


@numba.njit(cache=True, nogil=True)
def piece_products(patches, grads, pieces, products):  # pragma: no cover - compiled
    """products[i] = patches[:, b:b + length] @ grads[:, a:a + length]^T for (a, b, length) =
    pieces[i], fp32 with unit column strides, as torch.mm computes it: MKL's column-major SGEMM
    of products[i]^T = grads[:, a:a + length] patches[:, b:b + length]^T. Returns a value read
    from the calls' arguments after them (see batched_matmul)."""
    sizes = np.empty(6, dtype=np.int32)  # m, n, k, lda, ldb, ldc of each call
    sizes[0], sizes[1] = grads.shape[0], patches.shape[0]
    sizes[3], sizes[4], sizes[5] = grads.strides[0] // 4, patches.strides[0] // 4, products.strides[1] // 4
    scalars = np.empty(2, dtype=np.float32)  # alpha, beta
    scalars[0], scalars[1] = 1.0, 0.0
    flags = np.empty(2, dtype=np.uint8)  # grads transposed, patches as they lie
    flags[0], flags[1] = ord("T"), ord("N")
    size, scalar, flag, word = sizes.ctypes.data, scalars.ctypes.data, flags.ctypes.data, sizes.itemsize
    for i in range(pieces.shape[0]):
        sizes[2] = pieces[i, 2]
        _SGEMM(flag, flag + 1, size, size + word, size + 2 * word, scalar, grads.ctypes.data + 4 * pieces[i, 0],
               size + 3 * word, patches.ctypes.data + 4 * pieces[i, 1], size + 4 * word, scalar + scalars.itemsize,
               products[i].ctypes.data, size + 5 * word)
    return sizes[5] + flags[1] + scalars[1] + patches[0, 0] + grads[0, 0] + products[0, 0, 0]


@numba.njit(cache=True, nogil=True)
def patch_products(source, index, targets, patches, grads, pieces, products):  # pragma: no cover - compiled
    """A weight-gradient block of a convolution in one call: the run's patch matrix gathered into
    `patches` (gather_taps) and its pieces' products into `products` (piece_products)."""
    gather_taps(source, index, targets, patches)
    piece_products(patches, grads, pieces, products)
