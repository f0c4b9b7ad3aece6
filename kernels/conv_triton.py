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
kernels.triton_launch.store_partial; the target is the result tensor itself for one chunk, else
a workspace or atomic target that kernels.order_triton.finish_target reduces in the mode's
order. A one-chunk result is stored through (m, n0, n1, n2) strides, n split as the role's
output index (b, oy, ox), (b, y, x) or (ci, ky, kx), so it lands in NCHW directly; a workspace or
atomic target is a dense (M, N) matrix per chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .calls import next_key
from .geometry import conv_output_size, conv_reduction_lengths
from .order_triton import allocate_target, finish_target, target_kind
from .reduction import Reduction
from .triton_launch import (
    INTERPRETED,
    GPU_STAGES,
    INTERPRETER_CONFIG,
    NATIVE_DTYPE,
    Launch,
    LaunchConfig,
    as_kernel_input,
    check_index_range,
    chunk_range,
    dot_operand,
    grouped_tile,
    mma,
    pick_tile,
    store_partial,
)


@triton.jit
def _gather(ptr, i0, i1, i2, i3, s0, s1, s2, s3, mask):
    """ptr[i0, i1, i2, i3] through explicit strides (broadcast index tiles); 0 where masked.

    int32 offsets: the host checks that every tensor spans fewer than 2**31 elements.
    """
    return tl.load(ptr + (i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3), mask=mask, other=0.0)


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
def _operand_tiles(x_ptr, w_ptr, dy_ptr, k0, hi, offs_m, m_in, n_in, n0, n1, n2, H, W, HO, WO,
                   sxb, sxc, sxh, sxw, swo, swi, swh, sww, syb, syc, syh, syw,
                   ROLE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr,
                   STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr, BLOCK_K: tl.constexpr):
    """The ROLE's A (BLOCK_M, BLOCK_K) and B (BLOCK_K, BLOCK_N) tiles for k in [k0, min(k0 + BLOCK_K, hi))."""
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
    return a, b


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
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
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
    if INTERPRETED:  # no range() over runtime bounds there (kernels.triton_launch)
        k0 = lo
        while k0 < hi:
            a, b = _operand_tiles(x_ptr, w_ptr, dy_ptr, k0, hi, offs_m, m_in, n_in, n0, n1, n2, H, W, HO, WO,
                                  sxb, sxc, sxh, sxw, swo, swi, swh, sww, syb, syc, syh, syw,
                                  ROLE, KH, KW, STRIDE_H, STRIDE_W, PAD_H, PAD_W, BLOCK_K)
            acc = mma(dot_operand(a, PRECISION), dot_operand(b, PRECISION), acc, PRECISION)
            k0 += BLOCK_K
    else:
        for k0 in range(lo, hi, BLOCK_K):
            a, b = _operand_tiles(x_ptr, w_ptr, dy_ptr, k0, hi, offs_m, m_in, n_in, n0, n1, n2, H, W, HO, WO,
                                  sxb, sxc, sxh, sxw, swo, swi, swh, sww, syb, syc, syh, syw,
                                  ROLE, KH, KW, STRIDE_H, STRIDE_W, PAD_H, PAD_W, BLOCK_K)
            acc = mma(dot_operand(a, PRECISION), dot_operand(b, PRECISION), acc, PRECISION)

    if TARGET == "direct":  # the result tensor, through its (n0, n1, n2) strides
        columns = n0 * stride_t0 + n1 * stride_t1 + n2 * stride_t2
    else:  # a dense (M, N) matrix per chunk: contiguous columns let the stores vectorize
        columns = offs_n
    target = target_ptr + pid_k.to(tl.int64) * stride_ts + offs_m[:, None] * stride_tm + columns[None, :]
    store_partial(acc, target, m_in[:, None] & n_in[None, :], TARGET, ACCUMULATE)


@dataclass(frozen=True)
class ConvProblem:
    """Sizes of one convolution (groups 1, dilation 1) and the GEMM each role makes of it."""

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
        return tuple(map(conv_output_size, (self.height, self.width), self.kernel, self.stride, self.padding))

    def gemm(self, role: str) -> tuple[int, int, int, tuple[int, int]]:
        """(M, N, K, (D1, D2)) of a role; n = n0*D1*D2 + n1*D2 + n2 (kernels.conv's table)."""
        kh, kw = self.kernel
        ho, wo = self.out_size
        k = conv_reduction_lengths(self.in_channels, self.out_channels, kh, kw, self.batch, ho, wo)[role]
        if role == "forward":
            return self.out_channels, self.batch * ho * wo, k, (ho, wo)
        if role == "input_grad":
            return self.in_channels, self.batch * self.height * self.width, k, (self.height, self.width)
        return self.out_channels, self.in_channels * kh * kw, k, (kh, kw)

    def result_shape(self, role: str) -> tuple[int, int, int, int]:
        if role == "forward":
            return (self.batch, self.out_channels, *self.out_size)
        if role == "input_grad":
            return (self.batch, self.in_channels, self.height, self.width)
        return (self.out_channels, self.in_channels, *self.kernel)

    def operand_shapes(self) -> dict[str, tuple[int, int, int, int]]:
        return {
            "x": (self.batch, self.in_channels, self.height, self.width),
            "w": (self.out_channels, self.in_channels, *self.kernel),
            "dy": (self.batch, self.out_channels, *self.out_size),
        }


# (BLOCK_M, BLOCK_N, warps) per operand format, largest first (kernels.triton_launch.pick_tile
# chooses by the grid's size). Smaller than the GEMM's: every operand element of a tile gets its
# own gathered address and mask, which live in registers, so BLOCK_K stays at 32 for every
# format. 32-bit operands hold twice the registers of 16-bit ones, so tf32 starts at 64x128
# and fp32 (FMA, no tensor cores) at 64x64. Each entry is the largest tile, and the warps, that
# compile without spilling on sm_80 and sm_90 under triton 3.6 and 3.8 (python -m kernels.aot;
# e.g. fp32 64x64 spills its atomic store on 4 warps, 64x32 spills on 4 warps for fp16 and on
# 8 for fp32, fp32 32x64 spills its gathered addresses). 128x128 needs the operands in the
# format's own dtype (fp16/bf16): converting gathered fp32 operands in registers spills there.
# The smallest tiles give a ConstNet weight gradient (160 x 1440) in one chunk enough programs
# to fill an H100/H200 (64x64 gave it 69).
TENSOR_CORE_TILES = ((128, 128, 8), (64, 128, 8), (64, 64, 4), (64, 32, 8))
TILES = {"fp16": TENSOR_CORE_TILES, "bf16": TENSOR_CORE_TILES, "tf32": TENSOR_CORE_TILES[1:],
         "fp32": ((64, 64, 8), (32, 32, 4))}
BLOCK_K = 32


def conv_config(precision: str, dtypes, m: int, n: int, splits: int) -> LaunchConfig:
    """The GPU config of a role's GEMM on operands of `dtypes`: tiles by operand format and grid
    size, never by the GPU."""
    tiles = TILES[precision]
    if precision in ("fp16", "bf16") and any(dtype != NATIVE_DTYPE[precision] for dtype in dtypes):
        tiles = tiles[1:]
    block_m, block_n, warps = pick_tile(tiles, m, n, splits)
    # fp32 gathers pipeline as 4-byte cp.async copies, an address each: they spill (triton 3.6)
    return LaunchConfig(block_m, block_n, BLOCK_K, warps, 1 if precision == "fp32" else GPU_STAGES)


READS = {"forward": ("x", "w"), "input_grad": ("w", "dy"), "weight_grad": ("x", "dy")}


def as_mn_view(result: torch.Tensor, role: str) -> torch.Tensor:
    """A result-shaped tensor indexed (m, n0, n1, n2): channels first for forward and input_grad."""
    return result if role == "weight_grad" else result.transpose(0, 1)


def matrix_as_mn(matrix: torch.Tensor, problem: ConvProblem, role: str) -> torch.Tensor:
    """An (..., M, N) target indexed (..., m, n0, n1, n2)."""
    _, n, _, (d1, d2) = problem.gemm(role)
    return matrix.view(*matrix.shape[:-1], n // (d1 * d2), d1, d2)


def kernel_arguments(role: str, problem: ConvProblem, strides: dict, splits: int, split_stride: int, target_mn_strides):
    """The integer arguments of conv_kernel; `strides` maps "x", "w", "dy" to 4 strides (zeros if unread)."""
    m, n, k, _ = problem.gemm(role)
    names = {"x": ("sxb", "sxc", "sxh", "sxw"), "w": ("swo", "swi", "swh", "sww"), "dy": ("syb", "syc", "syh", "syw")}
    arguments = {"M": m, "N": n, "K": k, "SPLITS": splits, "H": problem.height, "W": problem.width}
    arguments.update(zip(("HO", "WO"), problem.out_size))
    for operand, stride_names in names.items():
        arguments.update(zip(stride_names, strides.get(operand, (0, 0, 0, 0))))
    arguments["stride_ts"] = split_stride
    arguments.update(zip(("stride_tm", "stride_t0", "stride_t1", "stride_t2"), target_mn_strides))
    return arguments


def kernel_constexprs(role: str, problem: ConvProblem, precision: str, accumulate: str, kind: str, config) -> dict:
    return {
        "ROLE": role, "KH": problem.kernel[0], "KW": problem.kernel[1],
        "STRIDE_H": problem.stride[0], "STRIDE_W": problem.stride[1],
        "PAD_H": problem.padding[0], "PAD_W": problem.padding[1],
        "PRECISION": precision, "ACCUMULATE": accumulate, "TARGET": kind, **config.constexprs(),
    }


def launch(role: str, problem: ConvProblem, operands: dict, reduction: Reduction, out_dtype) -> torch.Tensor:
    """Run one role of `problem` under `reduction` on the two `operands` it reads ("x", "w", "dy")."""
    m, n, k, _ = problem.gemm(role)
    key = next_key(reduction)
    first = operands[READS[role][0]]
    result_shape = problem.result_shape(role)
    if min(m, n, k) == 0:
        return torch.zeros(result_shape, dtype=out_dtype, device=first.device)
    operands = {name: as_kernel_input(tensor) for name, tensor in operands.items()}
    for name, tensor in operands.items():
        check_index_range(name, tensor)
    kind = target_kind(reduction)
    if kind == "direct":
        result = torch.empty(result_shape, dtype=out_dtype, device=first.device)
        check_index_range("the result", result)
        tensor, split_stride, mn_view = result, 0, as_mn_view(result, role)
    else:
        target = allocate_target(reduction, m, n, out_dtype, first.device)
        tensor, split_stride, mn_view = target.tensor, target.split_stride, matrix_as_mn(target.tensor, problem, role)
    config = INTERPRETER_CONFIG if INTERPRETED else conv_config(
        reduction.precision, [t.dtype for t in operands.values()], m, n, reduction.splits)
    pointers = {f"{name}_ptr": operands.get(name, first) for name in ("x", "w", "dy")}  # unread: any pointer
    strides = {name: tuple(t.stride()) for name, t in operands.items()}
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), reduction.splits)
    arguments = {**pointers, "target_ptr": tensor,
                 **kernel_arguments(role, problem, strides, reduction.splits, split_stride, mn_view.stride()[-4:])}
    constexprs = kernel_constexprs(role, problem, reduction.precision, reduction.accumulate, kind, config)
    Launch(conv_kernel, grid, arguments, constexprs, config.num_warps, config.num_stages, config.maxnreg).run()
    if kind == "direct":
        return result
    matrix = finish_target(target, reduction, key, out_dtype)
    return as_mn_view(matrix_as_mn(matrix, problem, role), role).contiguous()


def forward(x, w, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    problem = ConvProblem(*x.shape, w.shape[0], tuple(w.shape[2:]), tuple(stride), tuple(padding))
    return launch("forward", problem, {"x": x, "w": w}, reduction, out_dtype)


def input_grad(grad_out, w, input_size, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    problem = ConvProblem(grad_out.shape[0], w.shape[1], *input_size, w.shape[0], tuple(w.shape[2:]),
                          tuple(stride), tuple(padding))
    return launch("input_grad", problem, {"w": w, "dy": grad_out}, reduction, out_dtype)


def weight_grad(x, grad_out, kernel_size, stride, padding, reduction: Reduction, out_dtype) -> torch.Tensor:
    problem = ConvProblem(*x.shape, grad_out.shape[1], tuple(kernel_size), tuple(stride), tuple(padding))
    return launch("weight_grad", problem, {"x": x, "dy": grad_out}, reduction, out_dtype)


def gradients(x, w, grad_out, stride, padding, input_reduction: Reduction | None,
              weight_reduction: Reduction | None):
    """(input gradient, weight gradient) of one backward pass, each under its Reduction (None:
    not wanted, and None), in that order."""
    grad_x = grad_w = None
    if input_reduction is not None:
        grad_x = input_grad(grad_out, w, tuple(x.shape[2:]), stride, padding, input_reduction, x.dtype)
    if weight_reduction is not None:
        grad_w = weight_grad(x, grad_out, tuple(w.shape[2:]), stride, padding, weight_reduction, w.dtype)
    return grad_x, grad_w
