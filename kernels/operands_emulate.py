"""The (K, N) operands of the convolution roles as explicit matrices (emulate backend).

kernels.conv specifies each role as a GEMM; these build its right-hand operand for a run of
images: the im2col of the input (forward, and the weight gradient's transposed operand) and
the taps of the output gradient (input gradient). The Triton implicit-GEMM kernels read the
same matrices by address arithmetic instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import conv_output_size


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


def patch_matrix(x: torch.Tensor, kernel_size, stride, padding) -> torch.Tensor:
    """im2col of x: (Cin*kh*kw, N*Ho*Wo), row ci*kh*kw + ky*kw + kx, column b*Ho*Wo + oy*Wo + ox.

    Entry = x[b, ci, oy*sh - ph + ky, ox*sw - pw + kx] (zero outside the input).
    """
    (ph, pw) = padding
    framed = F.pad(x, (pw, pw, ph, ph)).transpose(0, 1)
    return _taps(framed, kernel_size, output_size(x.shape[2:], kernel_size, stride, padding), stride, flipped=False)


def output_grad_taps(grad_out: torch.Tensor, input_size, kernel_size, stride, padding) -> torch.Tensor:
    """The (Cout*kh*kw, N*H*W) operand of the input gradient.

    Row co*kh*kw + ky*kw + kx, column b*H*W + y*W + x holds grad_out[b, co, oy, ox] where
    oy*sh - ph + ky = y and ox*sw - pw + kx = x, and an exact zero for taps that land on no
    output position (between strided outputs or outside the output): the K index runs over all
    taps, as in the implicit GEMM.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = input_size, kernel_size, stride, padding
    n, cout, ho, wo = grad_out.shape
    if (sh, sw) != (1, 1):
        spread = grad_out.new_zeros(n, cout, (ho - 1) * sh + 1, (wo - 1) * sw + 1)
        spread[:, :, ::sh, ::sw] = grad_out
        grad_out = spread
    # Row r of `framed` is output-grid row r - (kh - 1 - ph); input row y with tap ky reads
    # row y + kh - 1 - ky. Negative pads crop rows no input position reads.
    top, left = kh - 1 - ph, kw - 1 - pw
    bottom = h + kh - 1 - grad_out.shape[2] - top
    right = w + kw - 1 - grad_out.shape[3] - left
    framed = F.pad(grad_out, (left, right, top, bottom)).transpose(0, 1)
    return _taps(framed, kernel_size, input_size, (1, 1), flipped=True)
