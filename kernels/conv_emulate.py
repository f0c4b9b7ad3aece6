"""The three roles of a conv2d as explicit GEMM operands, run through the emulated GEMM.

Each role materialises the (M, K) and (K, N) matrices that kernels.conv specifies (im2col of
the input, the zero-inserted output gradient, ...) and hands them to kernels.gemm.run_gemm, so
chunk boundaries, call numbering and the splitk order are exactly those of the GEMM. The
operands always get the same memory layout (torch's CPU matmul may sum in another order for
another layout), so the bits do not depend on the inputs' memory format. The Triton
implicit-GEMM kernels compute the same matrices by address arithmetic instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .gemm import run_gemm
from .geometry import conv_output_size
from .reduction import Reduction


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


def forward(x, w, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    """y[b, co, oy, ox] = C[co, b*Ho*Wo + oy*Wo + ox], C = W (Cout, Cin*kh*kw) @ im2col(x)."""
    cout, cin, kh, kw = w.shape
    cols = patch_matrix(x, (kh, kw), stride, padding)
    out = run_gemm(w.reshape(cout, cin * kh * kw).contiguous(), cols, reduction, "emulate", out_dtype)
    return _channels_first(out, x.shape[0], output_size(x.shape[2:], (kh, kw), stride, padding))


def input_grad(grad_out, w, input_size, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    """dx[b, ci, y, x] = C[ci, b*H*W + y*W + x], C = W^T (Cin, Cout*kh*kw) @ taps(grad_out)."""
    cout, cin, kh, kw = w.shape
    taps = output_grad_taps(grad_out, input_size, (kh, kw), stride, padding)
    weight_t = w.transpose(0, 1).reshape(cin, cout * kh * kw).contiguous()
    out = run_gemm(weight_t, taps, reduction, "emulate", out_dtype)
    return _channels_first(out, grad_out.shape[0], input_size)


def weight_grad(x, grad_out, kernel_size, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    """dw[co, ci, ky, kx] = C[co, ci*kh*kw + ky*kw + kx], C = dY (Cout, N*Ho*Wo) @ im2col(x)^T."""
    cols = patch_matrix(x, kernel_size, stride, padding)
    cout = grad_out.shape[1]
    grads = grad_out.transpose(0, 1).reshape(cout, cols.shape[1]).contiguous()
    out = run_gemm(grads, cols.t(), reduction, "emulate", out_dtype)
    return out.view(cout, x.shape[1], *kernel_size)


def _channels_first(out: torch.Tensor, batch: int, size) -> torch.Tensor:
    """(C, N*H*W) GEMM result laid out as a contiguous (N, C, H, W) tensor."""
    return out.view(out.shape[0], batch, *size).transpose(0, 1).contiguous()
