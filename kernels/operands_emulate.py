"""The (K, N) operands of the convolution roles as explicit matrices (emulate backend).

kernels.conv specifies each role as a GEMM; these build its right-hand operand for a run of
images: the im2col of the input (forward, and the weight gradient's transposed operand) and
the taps of the output gradient (input gradient). On the CPU one compiled pass (numba, GIL
released) writes the whole matrix, elsewhere one strided copy per tap. The Triton implicit-GEMM
kernels read the same matrices by address arithmetic instead.
"""
from __future__ import annotations

import numba
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


@numba.njit(cache=True, inline="always")
def _span(size_out, size_src, step, offset):  # pragma: no cover - compiled
    """Output indices o in [lo, hi) whose source index o * step + offset lies in [0, size_src)."""
    lo = 0 if offset >= 0 else (step - 1 - offset) // step
    hi = 0 if offset > size_src - 1 else (size_src - 1 - offset) // step + 1
    return lo, max(lo, min(hi, size_out))


@numba.njit(cache=True, nogil=True)
def _unfold(src, kh, kw, sign, step_y, step_x, offset_y, offset_x, out_h, out_w, out):  # pragma: no cover
    """out[(c*kh + ky)*kw + kx, (b*out_h + oy)*out_w + ox] = src[b, c, oy*step_y + offset_y + sign*ky,
    ox*step_x + offset_x + sign*kx], zero where that lies outside src."""
    batch, channels, h, w = src.shape
    for c in range(channels):
        for ky in range(kh):
            y_lo, y_hi = _span(out_h, h, step_y, offset_y + sign * ky)
            for kx in range(kw):
                shift = offset_x + sign * kx
                x_lo, x_hi = _span(out_w, w, step_x, shift)
                line = out[(c * kh + ky) * kw + kx]
                at = 0
                for b in range(batch):
                    for oy in range(out_h):
                        if oy < y_lo or oy >= y_hi:
                            for ox in range(out_w):
                                line[at + ox] = 0
                        else:
                            y = oy * step_y + offset_y + sign * ky
                            for ox in range(x_lo):
                                line[at + ox] = 0
                            for ox in range(x_lo, x_hi):
                                line[at + ox] = src[b, c, y, ox * step_x + shift]
                            for ox in range(x_hi, out_w):
                                line[at + ox] = 0
                        at += out_w


def _unfolded(src: torch.Tensor, kernel_size, step, offset, sign: int, out_size) -> torch.Tensor:
    (kh, kw), (out_h, out_w) = kernel_size, out_size
    out = src.new_empty(src.shape[1] * kh * kw, src.shape[0] * out_h * out_w)
    _unfold(src.contiguous().numpy(), kh, kw, sign, *step, *offset, out_h, out_w, out.numpy())
    return out


def patch_matrix(x: torch.Tensor, kernel_size, stride, padding) -> torch.Tensor:
    """im2col of x: (Cin*kh*kw, N*Ho*Wo), row ci*kh*kw + ky*kw + kx, column b*Ho*Wo + oy*Wo + ox.

    Entry = x[b, ci, oy*sh - ph + ky, ox*sw - pw + kx] (zero outside the input).
    """
    out_size = output_size(x.shape[2:], kernel_size, stride, padding)
    if x.device.type == "cpu":
        return _unfolded(x, kernel_size, stride, (-padding[0], -padding[1]), 1, out_size)
    (ph, pw) = padding
    framed = F.pad(x, (pw, pw, ph, ph)).transpose(0, 1)
    return _taps(framed, kernel_size, out_size, stride, flipped=False)


def output_grad_taps(grad_out: torch.Tensor, input_size, kernel_size, stride, padding) -> torch.Tensor:
    """The (Cout*kh*kw, N*H*W) operand of the input gradient.

    Row co*kh*kw + ky*kw + kx, column b*H*W + y*W + x holds grad_out[b, co, oy, ox] where
    oy*sh - ph + ky = y and ox*sw - pw + kx = x, and an exact zero for taps that land on no
    output position (between strided outputs or outside the output): the K index runs over all
    taps, as in the implicit GEMM.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = input_size, kernel_size, stride, padding
    n, cout, ho, wo = grad_out.shape
    if (sh, sw) != (1, 1):  # on the stride-1 grid of output positions, zero between them
        spread = grad_out.new_zeros(n, cout, (ho - 1) * sh + 1, (wo - 1) * sw + 1)
        spread[:, :, ::sh, ::sw] = grad_out
        grad_out = spread
    if grad_out.device.type == "cpu":  # input row y with tap ky reads grid row y + ph - ky
        return _unfolded(grad_out, kernel_size, (1, 1), (ph, pw), -1, input_size)
    # Row r of `framed` is output-grid row r - (kh - 1 - ph); input row y with tap ky reads
    # row y + kh - 1 - ky. Negative pads crop rows no input position reads.
    top, left = kh - 1 - ph, kw - 1 - pw
    bottom = h + kh - 1 - grad_out.shape[2] - top
    right = w + kw - 1 - grad_out.shape[3] - left
    framed = F.pad(grad_out, (left, right, top, bottom)).transpose(0, 1)
    return _taps(framed, kernel_size, input_size, (1, 1), flipped=True)
