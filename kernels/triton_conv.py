"""Triton implicit-GEMM conv2d: forward, input gradient and weight gradient, each under a Reduction.

One kernel, `conv_kernel`, computes the GEMM of one role (kernels.conv lists the three
orientations and index orders) without materialising its operands: a constexpr ROLE picks how
the (BLOCK_M, BLOCK_K) and (BLOCK_K, BLOCK_N) tiles are gathered from the NCHW tensors by
address arithmetic on their explicit strides (so channels-last tensors need no copy):

    role         A[m, k]                     B[k, n]
    forward      w[co, ci, ky, kx]           x[b, ci, oy*sh - ph + ky, ox*sw - pw + kx]
    input_grad   w[co, ci, ky, kx]           dy[b, co, oy, ox] where oy*sh - ph + ky = y, ...
    weight_grad  dy[b, co, oy, ox]           x[b, ci, oy*sh - ph + ky, ox*sw - pw + kx]

Positions outside the input, and input-gradient taps that land between strided outputs or
outside the output, load exact zeros (masked loads), so K is the same for every output element.
Program (tile, s) reduces K chunk s (kernels.order.chunk_bounds) and hands its fp32 partial to
kernels.triton_support.store_partial; the target is the result tensor itself for one chunk, else
a workspace or atomic target that kernels.triton_support.finish_target reduces in the mode's
order. Stores address the target through (m, n0, n1, n2) strides, n split as the role's output
index (b, oy, ox), (b, y, x) or (ci, ky, kx), so a one-chunk result lands in NCHW directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .gemm import next_key
from .reduction import Reduction
from .triton_gemm import device_sm_count, launch_config
from .triton_support import allocate_target, chunk_range, dot_operand, finish_target, mma, store_partial, target_kind

@triton.jit
def _gather(ptr, i0, i1, i2, i3, s0, s1, s2, s3, mask):
    """ptr[i0, i1, i2, i3] through explicit strides (broadcast index tiles); 0 where masked."""
    offsets = i0.to(tl.int64) * s0 + i1.to(tl.int64) * s1 + i2.to(tl.int64) * s2 + i3.to(tl.int64) * s3
    return tl.load(ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _split3(index, D1, D2):
    """index = i0*D1*D2 + i1*D2 + i2 -> (i0, i1, i2)."""
    return index // (D1 * D2), (index // D2) % D1, index % D2


@triton.jit
def _patch(x_ptr, b, ci, oy, ox, ky, kx, H, W, sxb, sxc, sxh, sxw,
           STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr, mask):
    """im2col entry x[b, ci, oy*sh - ph + ky, ox*sw - pw + kx], zero in the padding."""
    iy = oy * STRIDE_H - PAD_H + ky
    ix = ox * STRIDE_W - PAD_W + kx
    inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    return _gather(x_ptr, b, ci, iy, ix, sxb, sxc, sxh, sxw, mask & inside)


@triton.jit
def _output_grad_tap(dy_ptr, b, co, y, x, ky, kx, HO, WO, syb, syc, syh, syw,
                     STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr, mask):
    """dy[b, co, oy, ox] with oy*sh - ph + ky = y and ox*sw - pw + kx = x; zero if no such output."""
    ty = y + PAD_H - ky
    tx = x + PAD_W - kx
    oy = ty // STRIDE_H
    ox = tx // STRIDE_W
    hit = (ty >= 0) & (tx >= 0) & (ty % STRIDE_H == 0) & (tx % STRIDE_W == 0) & (oy < HO) & (ox < WO)
    return _gather(dy_ptr, b, co, oy, ox, syb, syc, syh, syw, mask & hit)


@triton.jit
def conv_kernel(
    x_ptr, w_ptr, dy_ptr, target_ptr,
    M, N, K, SPLITS, H, W, HO, WO,
    sxb, sxc, sxh, sxw, swo, swi, swh, sww, syb, syc, syh, syw,
    stride_ts, stride_tm, stride_t0, stride_t1, stride_t2,
    ROLE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    PRECISION: tl.constexpr, ACCUMULATE: tl.constexpr, TARGET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One output tile's partial over one K chunk of the ROLE's GEMM, stored to the target."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    # grouped tile order: GROUP_M tile rows share the B tiles they read while in L2
    tiles_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * tiles_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = min(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_in = offs_m < M
    n_in = offs_n < N
    # n as the role's output index (n0, n1, n2); m is co (forward, weight_grad) or ci (input_grad)
    if ROLE == "forward":
        n0, n1, n2 = _split3(offs_n, HO, WO)
    elif ROLE == "input_grad":
        n0, n1, n2 = _split3(offs_n, H, W)
    else:
        n0, n1, n2 = _split3(offs_n, KH, KW)
    lo, hi = chunk_range(pid_k, K, SPLITS)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(lo, hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_in = offs_k < hi
        a_mask = m_in[:, None] & k_in[None, :]
        b_mask = k_in[:, None] & n_in[None, :]
        if ROLE == "forward":  # k = (ci, ky, kx), n = (b, oy, ox)
            ci, ky, kx = _split3(offs_k, KH, KW)
            a = _gather(w_ptr, offs_m[:, None], ci[None, :], ky[None, :], kx[None, :], swo, swi, swh, sww, a_mask)
            b = _patch(x_ptr, n0[None, :], ci[:, None], n1[None, :], n2[None, :], ky[:, None], kx[:, None],
                       H, W, sxb, sxc, sxh, sxw, STRIDE_H, STRIDE_W, PAD_H, PAD_W, b_mask)
        elif ROLE == "input_grad":  # k = (co, ky, kx), n = (b, y, x)
            co, ky, kx = _split3(offs_k, KH, KW)
            a = _gather(w_ptr, co[None, :], offs_m[:, None], ky[None, :], kx[None, :], swo, swi, swh, sww, a_mask)
            b = _output_grad_tap(dy_ptr, n0[None, :], co[:, None], n1[None, :], n2[None, :], ky[:, None],
                                 kx[:, None], HO, WO, syb, syc, syh, syw, STRIDE_H, STRIDE_W, PAD_H, PAD_W, b_mask)
        else:  # k = (b, oy, ox), n = (ci, ky, kx)
            bi, oy, ox = _split3(offs_k, HO, WO)
            a = _gather(dy_ptr, bi[None, :], offs_m[:, None], oy[None, :], ox[None, :], syb, syc, syh, syw, a_mask)
            b = _patch(x_ptr, bi[:, None], n0[None, :], oy[:, None], ox[:, None], n1[None, :], n2[None, :],
                       H, W, sxb, sxc, sxh, sxw, STRIDE_H, STRIDE_W, PAD_H, PAD_W, b_mask)
        acc = mma(dot_operand(a, PRECISION), dot_operand(b, PRECISION), acc, PRECISION)

    target = (
        target_ptr
        + pid_k.to(tl.int64) * stride_ts
        + offs_m.to(tl.int64)[:, None] * stride_tm
        + (n0.to(tl.int64) * stride_t0 + n1.to(tl.int64) * stride_t1 + n2.to(tl.int64) * stride_t2)[None, :]
    )
    store_partial(acc, target, m_in[:, None] & n_in[None, :], TARGET, ACCUMULATE)


@dataclass(frozen=True)
class ConvProblem:
    """Sizes of one convolution (groups 1, dilation 1)."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def out_size(self) -> tuple[int, int]:
        return tuple(
            (i + 2 * p - k) // s + 1
            for i, k, s, p in zip((self.height, self.width), self.kernel, self.stride, self.padding)
        )

    def gemm(self, role: str) -> tuple[int, int, int, tuple[int, int]]:
        """(M, N, K, (D1, D2)) of a role, n = n0*D1*D2 + n1*D2 + n2."""
        kh, kw = self.kernel
        ho, wo = self.out_size
        if role == "forward":
            return self.out_channels, self.batch * ho * wo, self.in_channels * kh * kw, (ho, wo)
        if role == "input_grad":
            return self.in_channels, self.batch * self.height * self.width, self.out_channels * kh * kw, (self.height, self.width)
        return self.out_channels, self.in_channels * kh * kw, self.batch * ho * wo, (kh, kw)

    def result_shape(self, role: str) -> tuple[int, int, int, int]:
        if role == "forward":
            return (self.batch, self.out_channels, *self.out_size)
        if role == "input_grad":
            return (self.batch, self.in_channels, self.height, self.width)
        return (self.out_channels, self.in_channels, *self.kernel)


def _as_mn_view(result: torch.Tensor, role: str) -> torch.Tensor:
    """The result tensor indexed (m, n0, n1, n2): channels first for forward and input_grad."""
    return result if role == "weight_grad" else result.transpose(0, 1)


def _strides4(t) -> tuple[int, int, int, int]:
    """Strides of a 4-D operand; zeros for the operand a role does not read."""
    return (0, 0, 0, 0) if t is None else tuple(t.stride())


def launch(role: str, problem: ConvProblem, x, w, dy, reduction: Reduction, out_dtype: torch.dtype) -> torch.Tensor:
    """Run one role of `problem` under `reduction`; returns the result in its natural shape."""
    m, n, k, (d1, d2) = problem.gemm(role)
    key = next_key(reduction)
    device = (w if w is not None else dy).device
    result_shape = problem.result_shape(role)
    if min(m, n, k) == 0:
        return torch.zeros(result_shape, dtype=out_dtype, device=device)
    operands = [t for t in (x, w, dy) if t is not None]
    itemsize = max(t.element_size() for t in operands)
    config = launch_config(reduction.precision, itemsize, m, n, reduction.splits, device_sm_count(device))
    if target_kind(reduction) == "direct":
        result = torch.empty(result_shape, dtype=out_dtype, device=device)
        tensor, split_stride, mn_view = result, 0, _as_mn_view(result, role)
    else:
        target = allocate_target(reduction, m, n, out_dtype, device)
        tensor, split_stride = target.tensor, target.split_stride
        mn_view = tensor.view(*tensor.shape[:-1], n // (d1 * d2), d1, d2)
    stride_tm, stride_t0, stride_t1, stride_t2 = mn_view.stride()[-4:]
    placeholder = operands[0]
    x_, w_, dy_ = (t if t is not None else placeholder for t in (x, w, dy))
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), reduction.splits)
    conv_kernel[grid](
        x_, w_, dy_, tensor, m, n, k, reduction.splits,
        problem.height, problem.width, *problem.out_size,
        *_strides4(x), *_strides4(w), *_strides4(dy),
        split_stride, stride_tm, stride_t0, stride_t1, stride_t2,
        ROLE=role, KH=problem.kernel[0], KW=problem.kernel[1],
        STRIDE_H=problem.stride[0], STRIDE_W=problem.stride[1], PAD_H=problem.padding[0], PAD_W=problem.padding[1],
        PRECISION=reduction.precision, ACCUMULATE=reduction.accumulate, TARGET=target_kind(reduction),
        num_warps=config.num_warps, num_stages=config.num_stages, **config.constexprs(),
    )
    if target_kind(reduction) == "direct":
        return result
    matrix = finish_target(target, reduction, key, out_dtype)
    return _as_mn_view(matrix.view(m, n // (d1 * d2), d1, d2), role).contiguous()


def forward(x, w, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    problem = ConvProblem(*x.shape, w.shape[0], tuple(w.shape[2:]), stride, padding)
    return launch("forward", problem, x, w, None, reduction, out_dtype)


def input_grad(grad_out, w, input_size, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    problem = ConvProblem(grad_out.shape[0], w.shape[1], *input_size, w.shape[0], tuple(w.shape[2:]), stride, padding)
    return launch("input_grad", problem, None, w, grad_out, reduction, out_dtype)


def weight_grad(x, grad_out, kernel_size, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    problem = ConvProblem(*x.shape, grad_out.shape[1], tuple(kernel_size), stride, padding)
    return launch("weight_grad", problem, x, None, grad_out, reduction, out_dtype)
