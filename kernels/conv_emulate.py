"""The three roles of a conv2d as the GEMMs kernels.conv specifies, emulated block by block.

Chunk boundaries, operand rounding, partial dtypes, call numbering and the order in which chunk
partials are added are exactly those of the GEMM (kernels.gemm_emulate, kernels.order_cpu); only
how a chunk's partial is formed differs. On the CPU a role is a list of blocks of work, run in
parallel on single-threaded workers (kernels.workers_emulate), and a finishing step:

  one chunk (splits 1)  torch's own convolution (forward, transposed, weight-gradient), on runs
                        of images; the weight gradient's runs are added in run order. A weight
                        gradient with at least as many output channels as K (N*Ho*Wo) is
                        formed as several chunks are, below, with its one chunk.
  several chunks        the forward and the input gradient by runs of images: the run's
                        operand (kernels.operands_emulate) times each chunk of the weights,
                        one batched matmul over both padded chunk by chunk, the partials
                        added in their order straight into the output (in fp32 the three
                        in one compiled call, kernels.loops_cpu, which lets the GIL go
                        once; the matmul is torch.bmm's own MKL call); the
                        weight gradient by pieces of each chunk's (image, pixel) range (in
                        fp32 a run's gather and its pieces' products in one compiled call,
                        the products torch.mm's own MKL call), the pieces of a chunk added in
                        piece order, then the chunks in theirs;
                        or, where the chunk partials of the whole output would outweigh the
                        operand many times, the whole operand in the GEMM's output tiles.

The order inside a chunk is free (it is the tensor cores' on a GPU); here it is fixed by run
and piece sizes that depend on the shapes alone, so no bit depends on the thread count, and
inputs are made contiguous first, so none depends on their memory format. torch's convolutions
form a chunk only where they are plain sums of products (oneDNN's direct convolution in IEEE
fp32, or the im2col path for fp64); otherwise the operands path is used. Off the CPU every role
is the operand matrices times kernels.gemm_emulate. `gradients` runs both gradient roles of a
backward pass on the workers at once. Each call runs with torch's threads handed to the workers
(kernels.workers_emulate.threads_to_workers).
"""
from __future__ import annotations

import bisect
import functools
import math
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import gemm_emulate
from .calls import next_key
from .formats import ACCUMULATE_DTYPES, round_operand
from .operands_emulate import (OperandRuns, chunk_padded, output_grad_runs, output_grad_taps, output_size, patch_matrix,
                               patch_runs)
from .order import chunk_bounds
from .loops_cpu import MKL_GEMM, patch_products, piece_products, products_in_order
from .order_cpu import (BlockOrder, Placement, batched_partials, compiled_matmul_applies, in_order_arguments,
                        partials_arrays, partials_buffer, reduce_block)
from .reduction import Reduction
from .workers_emulate import ieee_fp32, in_dtype, one_thread, run_blocks, shaped, threads_to_workers

# Sizes of the blocks of work, in multiply-adds and bytes. A torch convolution call costs as much
# as tens of millions of multiply-adds before it starts, a matmul far fewer; a convolution split
# into more calls loses efficiency. A run's matmul partials stay in a core's cache, a run's
# convolution partials within bounded memory; so do the weight gradient's pieces.
CONV_RUN_PRODUCTS = 1 << 25
CONV_MAX_RUNS = 4
GEMM_RUN_PRODUCTS = 1 << 23
CACHE_BYTES = 1 << 23
RUN_BYTES = 1 << 25
PIECE_BYTES = 1 << 24
OPERAND_BYTES = 1 << 26  # a weight gradient's whole im2col up to this size is built at once
SUM_ELEMENTS = 1 << 16  # a block of the weight gradient's ordered sum: fewer elements cost more to hand out


class RoleWork(NamedTuple):
    """One role of a call as work: blocks run in parallel, then a finishing step."""

    blocks: list[Callable[[], None]]  # independent work, run in parallel
    finish: Callable[[], torch.Tensor]  # then this gives the role's result


def _done(result: torch.Tensor) -> RoleWork:
    return RoleWork([], lambda: result)


def _run(*roles: RoleWork) -> list[torch.Tensor]:
    run_blocks([block for role in roles for block in role.blocks])
    return [role.finish() for role in roles]


def _torch_conv_applies(reduction: Reduction, x: torch.Tensor, meets_zeros: torch.Tensor) -> bool:
    """Whether torch's CPU convolution forms the role's one chunk (splits 1) as specified: a plain
    sum of exact products (oneDNN's direct convolution, in IEEE fp32 on the workers, or fp64's
    im2col), and `meets_zeros`, the operand the GEMM multiplies by padding and inserted zeros, is
    finite (torch skips those products, where 0 * inf would give NaN). With several chunks, a call
    per chunk costs more than the role's matmuls."""
    if reduction.splits > 1:
        return False
    if x.dtype != torch.float64 and not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    # A finite sum has finite terms (one that overflows sends the role to the operands path, as
    # exact); summed on the caller's one thread, so the path taken does not depend on the count.
    return math.isfinite(meets_zeros.sum())


def _runs(length: int, count: int) -> list[tuple[int, int]]:
    """range(length) cut into `count` runs whose lengths differ by at most one."""
    count = min(max(count, 1), length)
    return [(i * length // count, (i + 1) * length // count) for i in range(count)]


def _run_count(total_products: int, total_bytes: int, conv: bool) -> int:
    """How many runs a role's work is cut into: a function of the shapes alone (see above)."""
    if conv:
        return max(min(-(-total_products // CONV_RUN_PRODUCTS), CONV_MAX_RUNS), -(-total_bytes // RUN_BYTES))
    return max(-(-total_products // GEMM_RUN_PRODUCTS), -(-total_bytes // CACHE_BYTES))


def _whole(runs: list[tuple[int, int]], conv, reduction: Reduction, out_dtype, summed: bool = False) -> RoleWork:
    """The one chunk of a role: conv(b0, b1) on each run of images [b0, b1), the runs' results
    concatenated (forward, input gradient) or, `summed`, added in run order (weight gradient)."""
    results = [None] * len(runs)

    def block(i, b0, b1):
        results[i] = conv(b0, b1)

    def finish():
        y = results[0]
        if len(results) > 1 and summed:
            for term in results[1:]:
                y += term
        elif len(results) > 1:
            y = torch.cat(results)
        return y.to(ACCUMULATE_DTYPES[reduction.accumulate]).to(out_dtype)

    return RoleWork([lambda i=i, r=r: block(i, *r) for i, r in enumerate(runs)], finish)


def _conv_runs(batch: int, products: int, most: int | None = None) -> list[tuple[int, int]]:
    """The runs of images of a role whose one chunk is torch's convolution (at most `most`)."""
    count = _run_count(products, 0, conv=True)
    return _runs(batch, count if most is None else min(count, most))


def _chunked(operand: OperandRuns, weights, batch: int, pixels: int, reduction: Reduction, key, out_dtype) -> RoleWork:
    """A forward or input-gradient role by runs of images: weights (channels, K) times the
    operand's (K, images * pixels) columns of the run, for each chunk of K (both operands padded
    chunk by chunk, operands_emulate.chunk_rows), and the run's partials added in their order
    into the (batch, channels, pixels) result."""
    channels, k, splits = weights.shape[0], weights.shape[1], reduction.splits
    out = torch.empty(batch, channels, pixels, dtype=out_dtype)
    by_channel = out.transpose(0, 1)
    acc_dtype = ACCUMULATE_DTYPES[reduction.accumulate]
    order = BlockOrder(splits, gemm_emulate.call_key(reduction, key), reduction.granularity, batch * pixels)
    chunks = chunk_padded(weights, splits, dim=1).view(channels, splits, -1).transpose(0, 1)
    runs = _runs(batch, _run_count(batch * channels * k * pixels, 4 * batch * (splits * channels + k) * pixels,
                                   conv=False))
    # fp32 partials added in each element's order into an fp32 result: a block can be one call
    one_call = order.per_element and chunks.dtype == acc_dtype == out_dtype == torch.float32
    in_one_call = {cols for cols in {(b1 - b0) * pixels for b0, b1 in runs}
                   if one_call and compiled_matmul_applies(chunks, cols)}
    chunks_array, by_channel_array = (chunks.numpy(), by_channel.numpy()) if in_one_call else (None, None)

    def block(b0, b1):
        place = Placement((0, 1, 0, 0), (b0 * pixels, 0, pixels, 1))
        if (b1 - b0) * pixels in in_one_call:
            source, index, targets, columns = operand.gather(b0, b1)
            partials = partials_arrays(splits, (channels, columns.shape[2]), torch.float32, within_block=True)
            products_in_order(source, index, targets, chunks_array, columns, partials.planes,
                               *in_order_arguments(partials.flat, partials.plane, (channels, b1 - b0, pixels),
                                                   by_channel_array[:, b0:b1], order, place))
            return
        partials = shaped(batched_partials(chunks, operand.run(b0, b1), within_block=True),
                          (splits, channels, b1 - b0, pixels))
        reduce_block(in_dtype(partials, acc_dtype), by_channel[:, b0:b1], order, place)

    return RoleWork([lambda r=r: block(*r) for r in runs], lambda: out)


def _forward(x, w, stride, padding, reduction: Reduction, out_dtype) -> RoleWork:
    key = next_key(reduction)
    batch, cin = x.shape[:2]
    cout, _, kh, kw = w.shape
    size = output_size(x.shape[2:], (kh, kw), stride, padding)
    k = cin * kh * kw
    if k == 0 or 0 in (batch, cout):
        return _done(torch.zeros(batch, cout, *size, dtype=out_dtype, device=x.device))
    x = round_operand(x, reduction.precision).contiguous()
    w = round_operand(w, reduction.precision).contiguous()
    if x.device.type != "cpu":
        out = gemm_emulate.gemm(w.view(cout, k), patch_matrix(x, (kh, kw), stride, padding), reduction, key, out_dtype)
        return _done(_channels_first(out, batch, size))
    pixels = size[0] * size[1]
    if _torch_conv_applies(reduction, x, w):
        return _whole(_conv_runs(batch, batch * cout * k * pixels),
                      lambda b0, b1: F.conv2d(x[b0:b1], w, None, stride, padding), reduction, out_dtype)
    role = _chunked(patch_runs(x, (kh, kw), stride, padding, reduction.splits), w.view(cout, k), batch, pixels,
                    reduction, key, out_dtype)
    return role._replace(finish=lambda: role.finish().view(batch, cout, *size))


def _input_grad(grad_out, w, input_size, stride, padding, reduction: Reduction, out_dtype) -> RoleWork:
    key = next_key(reduction)
    batch, cout = grad_out.shape[:2]
    _, cin, kh, kw = w.shape
    k = cout * kh * kw
    if k == 0 or 0 in (batch, cin):
        return _done(torch.zeros(batch, cin, *input_size, dtype=out_dtype, device=grad_out.device))
    grad_out = round_operand(grad_out, reduction.precision).contiguous()
    w = round_operand(w, reduction.precision).contiguous()
    pixels = input_size[0] * input_size[1]
    if grad_out.device.type == "cpu" and _torch_conv_applies(reduction, grad_out, w):
        # output_padding: the input rows and columns past the last output position's reach
        extra = [size - ((n - 1) * s - 2 * p + kk) for size, n, s, p, kk in
                 zip(input_size, grad_out.shape[2:], stride, padding, (kh, kw))]
        return _whole(_conv_runs(batch, batch * cin * k * pixels),
                      lambda b0, b1: F.conv_transpose2d(grad_out[b0:b1], w, None, stride, padding, extra),
                      reduction, out_dtype)
    weights_t = w.transpose(0, 1).reshape(cin, k)
    if grad_out.device.type != "cpu":
        taps = output_grad_taps(grad_out, input_size, (kh, kw), stride, padding)
        return _done(_channels_first(gemm_emulate.gemm(weights_t, taps, reduction, key, out_dtype), batch, input_size))
    role = _chunked(output_grad_runs(grad_out, input_size, (kh, kw), stride, padding, reduction.splits), weights_t,
                    batch, pixels, reduction, key, out_dtype)
    return role._replace(finish=lambda: role.finish().view(batch, cin, *input_size))


def _weight_grad(x, grad_out, kernel_size, stride, padding, reduction: Reduction, out_dtype) -> RoleWork:
    """The weight gradient's role: torch's conv per run of images where one chunk allows it and the
    output is the smaller, else chunk products of the patch matrix per run of images (pieces),
    or, where the chunk partials would outweigh the operand 4x or more, the GEMM's cache-sized
    output tiles over all of it."""
    key = next_key(reduction)
    batch, cin = x.shape[:2]
    cout, (kh, kw) = grad_out.shape[1], kernel_size
    n, k = cin * kh * kw, batch * grad_out.shape[2] * grad_out.shape[3]
    if k == 0 or 0 in (cout, n):
        return _done(torch.zeros(cout, cin, kh, kw, dtype=out_dtype, device=x.device))
    x = round_operand(x, reduction.precision).contiguous()
    grad_out = round_operand(grad_out, reduction.precision).contiguous()
    # oneDNN's weight-gradient convolution costs more than the GEMM where its output outweighs its
    # operand: 35-42 against 16-21 ms on ConstNet-16-10's stage 3 at batch 8 (cout 640, K 512)
    if x.device.type == "cpu" and cout < k and _torch_conv_applies(reduction, x, grad_out):
        runs = _conv_runs(batch, cout * n * k, most=_results_fitting(cout * n))
        shape = (cout, cin, kh, kw)
        return _whole(runs, lambda b0, b1: torch.nn.grad.conv2d_weight(x[b0:b1], shape, grad_out[b0:b1], stride,
                                                                       padding), reduction, out_dtype, summed=True)
    grads = grad_out.transpose(0, 1).reshape(cout, k)
    if x.device.type != "cpu":
        cols = patch_matrix(x, kernel_size, stride, padding)
        return _done(gemm_emulate.gemm(grads, cols.t(), reduction, key, out_dtype).view(cout, cin, kh, kw))
    order = BlockOrder(reduction.splits, gemm_emulate.call_key(reduction, key), reduction.granularity, n)
    if reduction.splits * cout >= 4 * k and 4 * n * k <= OPERAND_BYTES:
        cols = patch_matrix(x, kernel_size, stride, padding).t().contiguous()
        out = torch.empty(cout, n, dtype=out_dtype)
        blocks = gemm_emulate.tile_blocks(grads, cols, reduction, order, out)
        return RoleWork(blocks, lambda: out.view(cout, cin, kh, kw))
    return _weight_grad_pieces(x, grads, kernel_size, stride, padding, reduction, order, out_dtype)


def _results_fitting(size: int) -> int:
    """How many runs' results of `size` elements fit in the bounded memory of a role's pieces (at least 2)."""
    return max(2, PIECE_BYTES // (4 * size))


def _weight_grad_pieces(x, grads, kernel_size, stride, padding, reduction: Reduction, order: BlockOrder,
                        out_dtype) -> RoleWork:
    """Runs of images, each a block computing its pieces of the chunks (products of the run's
    patch matrix with `grads`, the (C_out, K) output gradient); the pieces of each chunk are then
    added in piece order and the chunks in `order`, in blocks of the patch rows that fit in cache.

    A piece is formed transposed, (Cin*kh*kw, C_out) = patches (rows, the piece's pixels) @ its
    grads^T: MKL reads the patch matrix along its rows then, 1.3-2.9x faster on the quick net's
    layers than through its transpose. In fp32 a run's block is one compiled call (gather and
    products), where it gives torch.mm's bits (compared once per geometry)."""
    batch, cin = x.shape[:2]
    (cout, k), (kh, kw) = grads.shape, kernel_size
    pixels, n = k // batch, cin * kh * kw
    bounds = chunk_bounds(k, reduction.splits)
    count = min(_run_count(cout * n * k, 4 * (n + cout) * k, conv=False), _results_fitting(cout * n))
    runs = _runs(batch, count)
    starts = [b0 * pixels for b0, _ in runs]
    pieces = _pieces(bounds, starts[1:])  # (lo, hi, chunk): a chunk's pieces lie in one run each
    firsts = [bisect.bisect_left(pieces, (start,)) for start in starts] + [len(pieces)]
    products = x.new_empty(len(pieces), n, cout)
    operand = patch_runs(x, kernel_size, stride, padding)
    grads_array, products_array = grads.numpy(), products.numpy()
    # each run's pieces as (K column, the run's column, length); in fp32 a run can be one call
    run_pieces = [np.array([(lo, lo - starts[r], hi - lo) for lo, hi, _ in pieces[firsts[r]:firsts[r + 1]]],
                           dtype=np.int64) for r in range(len(runs))]
    in_one_call = [x.dtype == torch.float32 and _pieces_in_one_call(cout, n, k, (b1 - b0) * pixels, run_pieces[r])
                   for r, (b0, b1) in enumerate(runs)]

    def block(r, b0, b1):
        if in_one_call[r]:
            source, index, targets, columns = operand.gather(b0, b1)
            patch_products(source, index, targets, columns[0], grads_array, run_pieces[r],
                           products_array[firsts[r]:firsts[r + 1]])
            return
        patches = operand.run(b0, b1).numpy()[0]  # (n, the run's pixels); numpy views keep the GIL
        for i, (at, start, length) in zip(range(firsts[r], firsts[r + 1]), run_pieces[r].tolist()):
            torch.mm(torch.from_numpy(patches[:, start:start + length]),
                     torch.from_numpy(grads_array[:, at:at + length].T), out=products[i])

    out = torch.empty(cout, n, dtype=out_dtype)
    by_patch_row = out.t()
    acc_dtype = ACCUMULATE_DTYPES[reduction.accumulate]

    def rows(r0, r1):  # the chunks of these patch rows from their pieces, added in piece order; then in order
        partials = products[:, r0:r1]
        if len(pieces) > len(bounds):
            partials = partials_buffer(len(bounds), (r1 - r0, cout), x.dtype, within_block=True)
            for i, (_, _, s) in enumerate(pieces):
                if i == 0 or pieces[i - 1][2] != s:
                    partials[s] = products[i, r0:r1]
                else:
                    partials[s] += products[i, r0:r1]
        reduce_block(in_dtype(partials, acc_dtype)[:, None], by_patch_row[None, r0:r1], order,
                     Placement((0, 0, 0, 1), (r0, 0, 1, 0)))

    def finish():  # in blocks of patch rows whose pieces fit in cache, of at least SUM_ELEMENTS elements each
        count = min(-(-4 * len(pieces) * cout * n // CACHE_BYTES), -(-cout * n // SUM_ELEMENTS))
        run_blocks([lambda r=r: rows(*r) for r in _runs(n, count)])
        return out.view(cout, cin, kh, kw)

    return RoleWork([lambda r=r, run=run: block(r, *run) for r, run in enumerate(runs)], finish)


def _pieces_in_one_call(cout: int, n: int, k: int, cols: int, run_pieces: np.ndarray) -> bool:
    """Whether loops_cpu.piece_products gives torch.mm's bits for a run's pieces (see
    _weight_grad_pieces) of an (n, cols) patch matrix and a (C_out, K) output gradient."""
    return MKL_GEMM and _pieces_match(cout, n, k, cols, tuple(map(tuple, run_pieces.tolist())))


@functools.lru_cache(maxsize=None)
def _pieces_match(cout: int, n: int, k: int, cols: int, run_pieces: tuple) -> bool:
    """The comparison, once per geometry, on random operands, with torch set as the blocks set it."""
    generator = torch.Generator().manual_seed(cols)
    patches, grads = torch.randn(n, cols, generator=generator), torch.randn(cout, k, generator=generator)
    compiled, expected = torch.empty(len(run_pieces), n, cout), torch.empty(len(run_pieces), n, cout)
    with one_thread(), ieee_fp32():
        piece_products(patches.numpy(), grads.numpy(), np.array(run_pieces, dtype=np.int64), compiled.numpy())
        for i, (at, start, length) in enumerate(run_pieces):
            torch.mm(patches[:, start:start + length], grads[:, at:at + length].t(), out=expected[i])
    return torch.equal(compiled, expected)


def _pieces(bounds, cuts: list[int]) -> list[tuple[int, int, int]]:
    """(lo, hi, chunk) of each piece: the chunks [lo, hi) cut at the sorted positions `cuts`."""
    pieces = []
    for s, (lo, hi) in enumerate(bounds):
        ends = [lo, *cuts[bisect.bisect_right(cuts, lo):bisect.bisect_left(cuts, hi)], hi]
        pieces += [(a, b, s) for a, b in zip(ends, ends[1:])]
    return pieces


def _channels_first(out: torch.Tensor, batch: int, size) -> torch.Tensor:
    """(C, N*H*W) GEMM result laid out as a contiguous (N, C, H, W) tensor."""
    return out.view(out.shape[0], batch, *size).transpose(0, 1).contiguous()


def role_work(role: str, x, w, grad_out, stride, padding, reduction: Reduction) -> RoleWork:
    """A role's blocks of work and finishing step on the CPU, built as its call builds them (a
    call number taken) and not run: what its own work costs, apart from building it, handing
    blocks to workers and the calls around it (probes.timing.conv_work_shares). `grad_out` is
    unused by the forward. Run the blocks before each finish, which may consume their results."""
    if role == "forward":
        return _forward(x, w, stride, padding, reduction, x.dtype)
    if role == "input_grad":
        return _input_grad(grad_out, w, tuple(x.shape[2:]), stride, padding, reduction, x.dtype)
    return _weight_grad(x, grad_out, tuple(w.shape[2:]), stride, padding, reduction, w.dtype)


def forward(x, w, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    """y[b, co, oy, ox] = C[co, b*Ho*Wo + oy*Wo + ox], C = W (Cout, Cin*kh*kw) @ im2col(x)."""
    with threads_to_workers():
        return _run(_forward(x, w, stride, padding, reduction, out_dtype))[0]


def input_grad(grad_out, w, input_size, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    """dx[b, ci, y, x] = C[ci, b*H*W + y*W + x], C = W^T (Cin, Cout*kh*kw) @ taps(grad_out)."""
    with threads_to_workers():
        return _run(_input_grad(grad_out, w, input_size, stride, padding, reduction, out_dtype))[0]


def weight_grad(x, grad_out, kernel_size, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    """dw[co, ci, ky, kx] = C[co, ci*kh*kw + ky*kw + kx], C = dY (Cout, N*Ho*Wo) @ im2col(x)^T."""
    with threads_to_workers():
        return _run(_weight_grad(x, grad_out, kernel_size, stride, padding, reduction, out_dtype))[0]


def gradients(x, w, grad_out, stride, padding, input_reduction: Reduction | None,
              weight_reduction: Reduction | None):
    """(input gradient, weight gradient) of one backward pass, each under its Reduction (None:
    not wanted, and None), their blocks run on the workers together; call numbers are taken
    input gradient first, as by the two roles."""
    roles = []
    with threads_to_workers():
        if input_reduction is not None:
            roles.append(_input_grad(grad_out, w, tuple(x.shape[2:]), stride, padding, input_reduction, x.dtype))
        if weight_reduction is not None:
            roles.append(_weight_grad(x, grad_out, tuple(w.shape[2:]), stride, padding, weight_reduction, w.dtype))
        results = iter(_run(*roles))
    return tuple(None if reduction is None else next(results) for reduction in (input_reduction, weight_reduction))
