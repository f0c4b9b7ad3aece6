"""The (K, N) operands of the convolution roles as explicit matrices (emulate backend).

kernels.conv specifies each role as a GEMM; these build its right-hand operand for a run of
images: the im2col of the input (forward, and the weight gradient's transposed operand) and
the taps of the output gradient (input gradient). On the CPU each row is one compiled gather
(kernels.loops_cpu, GIL released) from a copy of one channel of the run's images, through an
index of source positions that depends on the layer's geometry alone (computed once per
geometry); elsewhere one strided copy per tap. The Triton implicit-GEMM kernels read the same
matrices by address arithmetic instead.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import conv_output_size
from .loops_cpu import gather_taps, tap_index
from .order import chunk_bounds
from .order_cpu import index_dtype
from .workers_emulate import numpy_dtype


def output_size(input_size, kernel_size, stride, padding) -> tuple[int, int]:
    """(Ho, Wo) of a convolution without dilation."""
    return tuple(map(conv_output_size, input_size, kernel_size, stride, padding))


def _taps(framed: torch.Tensor, kernel_size, out_size, step, flipped: bool) -> torch.Tensor:
    """Rows (c, ky, kx), columns (b, oy, ox) of framed[c, b, r(ky) + oy*sh, r(kx) + ox*sw].

    framed is (C, N, rows, cols); r(ky) = ky, or kh - 1 - ky when `flipped`. One strided copy per
    tap: far faster than copying one 6-D strided view (or flipping one).
    """
    (kh, kw), (ho, wo), (sh, sw) = kernel_size, out_size, step
    channels, batch = framed.shape[:2]
    taps = framed.new_empty(channels, kh, kw, batch, ho, wo)
    for ky in range(kh):
        for kx in range(kw):
            row, col = (kh - 1 - ky, kw - 1 - kx) if flipped else (ky, kx)
            taps[:, ky, kx] = framed[:, :, row : row + (ho - 1) * sh + 1 : sh, col : col + (wo - 1) * sw + 1 : sw]
    return taps.view(channels * kh * kw, batch * ho * wo)


class _Axis(NamedTuple):
    """Target position t along one axis reads source position (t * scale + offset + sign * tap) / divisor,
    where that is a whole number in [0, source); else an exact zero."""

    target: int
    source: int
    scale: int
    offset: int
    sign: int
    divisor: int


@functools.lru_cache(maxsize=64)
def _cached_tap_index(kernel_size, batch: int, rows: _Axis, cols: _Axis) -> np.ndarray:
    """tap_index of a geometry (a layer's geometry recurs at every step), as unsigned indices."""
    index = tap_index(*kernel_size, batch, rows, cols)
    return index.astype(index_dtype(1 + batch * rows.source * cols.source))


@functools.lru_cache(maxsize=64)
def chunk_rows(k: int, splits: int) -> np.ndarray:
    """Where each of K rows goes when every chunk of K (kernels.order.chunk_bounds) is padded
    with zero rows to the longest, ceil(K / splits): chunk s then starts at row s * ceil(K / splits),
    and the chunk products are one batched matmul even where the chunks differ in length."""
    longest = -(-k // splits)
    return np.array([s * longest + row - lo for s, (lo, hi) in enumerate(chunk_bounds(k, splits))
                     for row in range(lo, hi)], dtype=np.int64)


class OperandRuns:
    """The (K, N) operand of a convolution role on the CPU, gathered a run of images at a time:
    one compiled gather per run into fresh memory (its Python keeps the GIL, kernels.workers_emulate),
    with the rows padded chunk by chunk (chunk_rows) for `splits` chunks."""

    def __init__(self, src: torch.Tensor, kernel_size, rows: _Axis, cols: _Axis, splits: int):
        self.source = src.detach().numpy().reshape(*src.shape[:2], -1)  # (images, channels, pixels), contiguous
        self.kernel_size, self.rows, self.cols, self.dtype = tuple(kernel_size), rows, cols, src.dtype
        k = src.shape[1] * self.kernel_size[0] * self.kernel_size[1]
        self.splits, self.longest, self.targets = splits, -(-k // splits), chunk_rows(k, splits)

    def gather(self, b0: int, b1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """gather_taps' arguments for the columns of images [b0, b1): (source, index, targets, an
        empty (splits, ceil(K / splits), (b1 - b0) * pixels) array for the columns)."""
        index = _cached_tap_index(self.kernel_size, b1 - b0, self.rows, self.cols)
        columns = np.empty((self.splits, self.longest, index.shape[1]), numpy_dtype(self.dtype))
        return self.source[b0:b1], index, self.targets, columns

    def run(self, b0: int, b1: int) -> torch.Tensor:
        """(splits, ceil(K / splits), (b1 - b0) * pixels): the columns of images [b0, b1)."""
        source, index, targets, columns = self.gather(b0, b1)
        gather_taps(source, index, targets, columns.reshape(self.splits * self.longest, -1))
        return torch.from_numpy(columns)


def chunk_padded(matrix: torch.Tensor, splits: int, dim: int = 0) -> torch.Tensor:
    """The 2-D matrix with its K rows (dim 0) or columns (dim 1) padded chunk by chunk (chunk_rows)."""
    k = matrix.shape[dim]
    if k % splits == 0:
        return matrix
    shape = list(matrix.shape)
    shape[dim] = splits * -(-k // splits)
    rows = torch.from_numpy(chunk_rows(k, splits)).to(matrix.device)
    return matrix.new_zeros(shape).index_copy_(dim, rows, matrix)


def patch_runs(x: torch.Tensor, kernel_size, stride, padding, splits: int = 1) -> OperandRuns:
    """patch_matrix of x on the CPU, by runs of images."""
    out_size = output_size(x.shape[2:], kernel_size, stride, padding)
    # output row oy with tap ky reads input row oy*sh - ph + ky
    rows, cols = (_Axis(out, size, step, -pad, 1, 1)
                  for out, size, step, pad in zip(out_size, x.shape[2:], stride, padding))
    return OperandRuns(x, kernel_size, rows, cols, splits)


def output_grad_runs(grad_out: torch.Tensor, input_size, kernel_size, stride, padding, splits: int = 1) -> OperandRuns:
    """output_grad_taps of grad_out on the CPU, by runs of images."""
    # input row y with tap ky reads output row (y + ph - ky) / sh
    rows, cols = (_Axis(size, out, 1, pad, -1, step)
                  for size, out, step, pad in zip(input_size, grad_out.shape[2:], stride, padding))
    return OperandRuns(grad_out, kernel_size, rows, cols, splits)


def _whole_operand(runs: OperandRuns, batch: int) -> torch.Tensor:
    """The operand of all `batch` images as one (rows, columns) matrix."""
    columns = runs.run(0, batch)
    return columns.view(-1, columns.shape[2])


def patch_matrix(x: torch.Tensor, kernel_size, stride, padding, splits: int = 1) -> torch.Tensor:
    """im2col of x: (Cin*kh*kw, N*Ho*Wo), row ci*kh*kw + ky*kw + kx, column b*Ho*Wo + oy*Wo + ox.

    Entry = x[b, ci, oy*sh - ph + ky, ox*sw - pw + kx] (zero outside the input). With `splits`,
    the rows are padded chunk by chunk (chunk_rows).
    """
    if x.device.type == "cpu":
        return _whole_operand(patch_runs(x, kernel_size, stride, padding, splits), x.shape[0])
    out_size = output_size(x.shape[2:], kernel_size, stride, padding)
    (ph, pw) = padding
    framed = F.pad(x, (pw, pw, ph, ph)).transpose(0, 1)
    return chunk_padded(_taps(framed, kernel_size, out_size, stride, flipped=False), splits)


def output_grad_taps(grad_out: torch.Tensor, input_size, kernel_size, stride, padding, splits: int = 1) -> torch.Tensor:
    """The (Cout*kh*kw, N*H*W) operand of the input gradient.

    Row co*kh*kw + ky*kw + kx, column b*H*W + y*W + x holds grad_out[b, co, oy, ox] where
    oy*sh - ph + ky = y and ox*sw - pw + kx = x, and an exact zero for taps that land on no
    output position (between strided outputs or outside the output): the K index runs over all
    taps, as in the implicit GEMM. With `splits`, the rows are padded chunk by chunk (chunk_rows).
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = input_size, kernel_size, stride, padding
    n, cout, ho, wo = grad_out.shape
    if grad_out.device.type == "cpu":
        return _whole_operand(output_grad_runs(grad_out, input_size, kernel_size, stride, padding, splits), n)
    if (sh, sw) != (1, 1):  # on the stride-1 grid of output positions, zero between them
        spread = grad_out.new_zeros(n, cout, (ho - 1) * sh + 1, (wo - 1) * sw + 1)
        spread[:, :, ::sh, ::sw] = grad_out
        grad_out = spread
    # Row r of `framed` is output-grid row r - (kh - 1 - ph); input row y with tap ky reads
    # row y + kh - 1 - ky. Negative pads crop rows no input position reads.
    top, left = kh - 1 - ph, kw - 1 - pw
    bottom = h + kh - 1 - grad_out.shape[2] - top
    right = w + kw - 1 - grad_out.shape[3] - left
    framed = F.pad(grad_out, (left, right, top, bottom)).transpose(0, 1)
    return chunk_padded(_taps(framed, kernel_size, input_size, (1, 1), flipped=True), splits)
