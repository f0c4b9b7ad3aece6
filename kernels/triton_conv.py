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
from .triton_gemm import INTERPRETER_CONFIG, GemmConfig, device_sm_count
from .triton_support import (
    INTERPRETED,
    allocate_target,
    check_index_range,
    chunk_range,
    dot_operand,
    finish_target,
    mma,
    store_partial,
    target_kind,
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
        + offs_m[:, None] * stride_tm
        + (n0 * stride_t0 + n1 * stride_t1 + n2 * stride_t2)[None, :]
    )
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
        return tuple(
            (i + 2 * p - k) // s + 1
            for i, k, s, p in zip((self.height, self.width), self.kernel, self.stride, self.padding)
        )

    def gemm(self, role: str) -> tuple[int, int, int, tuple[int, int]]:
        """(M, N, K, (D1, D2)) of a role; n = n0*D1*D2 + n1*D2 + n2 (kernels.conv's table)."""
        kh, kw = self.kernel
        ho, wo = self.out_size
        if role == "forward":
            return self.out_channels, self.batch * ho * wo, self.in_channels * kh * kw, (ho, wo)
        if role == "input_grad":
            hw = (self.height, self.width)
            return self.in_channels, self.batch * hw[0] * hw[1], self.out_channels * kh * kw, hw
        return self.out_channels, self.in_channels * kh * kw, self.batch * ho * wo, (kh, kw)

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


# Output tiles, largest first; the first whose grid gives every SM a program is used. Smaller
# than the GEMM's: every operand element of a tile gets its own gathered address and mask, which
# live in registers, so BLOCK_K stays at 32 for every input dtype.
TILES = ((128, 128), (64, 128), (64, 64))
BLOCK_K = 32
GPU_STAGES = 3
# Index into TILES of the largest tile each operand precision may use (see launch_config).
LARGEST_TILE = {"fp16": 0, "bf16": 0, "tf32": 1, "fp32": 2}


def launch_config(precision: str, m: int, n: int, splits: int, sm_count: int, interpreted: bool) -> GemmConfig:
    """The fixed config for a role's GEMM (no autotuning: a shape always runs the same code).

    32-bit operands hold twice the registers of 16-bit ones, so tf32 starts at 64x128 and fp32
    (FMA, no tensor cores) at 64x64 spread over 8 warps: the largest tiles that compile without
    spilling on sm_80 and sm_90 (python -m kernels.aot; fp32 on 4 warps spills its atomic store).
    """
    if interpreted:
        return INTERPRETER_CONFIG
    tiles = TILES[LARGEST_TILE[precision]:]
    block_m, block_n = next(
        (tile for tile in tiles if triton.cdiv(m, tile[0]) * triton.cdiv(n, tile[1]) * splits >= sm_count), tiles[-1]
    )
    warps = 8 if block_m * block_n >= 64 * 128 or precision == "fp32" else 4
    return GemmConfig(block_m, block_n, BLOCK_K, 8, warps, GPU_STAGES)


READS = {"forward": ("x", "w"), "input_grad": ("w", "dy"), "weight_grad": ("x", "dy")}


def _as_mn_view(result: torch.Tensor, role: str) -> torch.Tensor:
    """A result-shaped tensor indexed (m, n0, n1, n2): channels first for forward and input_grad."""
    return result if role == "weight_grad" else result.transpose(0, 1)


def _matrix_as_mn(matrix: torch.Tensor, problem: ConvProblem, role: str) -> torch.Tensor:
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
    for name, tensor in operands.items():
        check_index_range(name, tensor)
    kind = target_kind(reduction)
    if kind == "direct":
        result = torch.empty(result_shape, dtype=out_dtype, device=first.device)
        check_index_range("the result", result)
        tensor, split_stride, mn_view = result, 0, _as_mn_view(result, role)
    else:
        target = allocate_target(reduction, m, n, out_dtype, first.device)
        tensor, split_stride, mn_view = target.tensor, target.split_stride, _matrix_as_mn(target.tensor, problem, role)
    config = launch_config(reduction.precision, m, n, reduction.splits, device_sm_count(first.device), INTERPRETED)
    pointers = {name: operands.get(name, first) for name in ("x", "w", "dy")}  # an unread operand: any pointer
    strides = {name: tuple(t.stride()) for name, t in operands.items()}
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), reduction.splits)
    conv_kernel[grid](
        pointers["x"], pointers["w"], pointers["dy"], tensor,
        **kernel_arguments(role, problem, strides, reduction.splits, split_stride, mn_view.stride()[-4:]),
        **kernel_constexprs(role, problem, reduction.precision, reduction.accumulate, kind, config),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if kind == "direct":
        return result
    matrix = finish_target(target, reduction, key, out_dtype)
    return _as_mn_view(_matrix_as_mn(matrix, problem, role), role).contiguous()


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


# ----------------------------------------------------------------------------- AOT registry

# The layer geometries of the paper's networks (kernel, stride, padding), at ConstNet's batch
# 128 and widths: 3x3 blocks at stride 1 and 2, 1x1 widening shortcuts at stride 1 and 2.
AOT_GEOMETRIES = {
    "3x3 s1": ConvProblem(128, 160, 32, 32, 160, (3, 3), (1, 1), (1, 1)),
    "3x3 s2": ConvProblem(128, 160, 32, 32, 320, (3, 3), (2, 2), (1, 1)),
    "1x1 s1": ConvProblem(128, 16, 32, 32, 160, (1, 1), (1, 1), (0, 0)),
    "1x1 s2": ConvProblem(128, 160, 32, 32, 320, (1, 1), (2, 2), (0, 0)),
}
AOT_SM_COUNT = 132  # an H100 SXM
AOT_SPLITS = 8
NATURAL_INPUT = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "bf16": "bf16"}
ROLES = tuple(READS)


def _aot_variant(role, geometry, precision, kind, accumulate, representative=False):
    from .aot import KernelVariant

    problem = AOT_GEOMETRIES[geometry]
    m, n, _, _ = problem.gemm(role)
    splits = 1 if kind == "direct" else AOT_SPLITS
    input_format = NATURAL_INPUT[precision]
    config = launch_config(precision, m, n, splits, AOT_SM_COUNT, interpreted=False)
    shapes = problem.operand_shapes()
    strides = {name: torch.empty(shapes[name], device="meta").stride() for name in READS[role]}
    if kind == "direct":
        mn_view = _as_mn_view(torch.empty(problem.result_shape(role), device="meta"), role)
    else:
        mn_view = _matrix_as_mn(torch.empty(splits, m, n, device="meta"), problem, role)
    split_stride = m * n if kind == "workspace" else 0
    target_format = input_format if kind == "direct" else accumulate
    args = {"x_ptr": f"*{input_format}", "w_ptr": f"*{input_format}", "dy_ptr": f"*{input_format}",
            "target_ptr": f"*{target_format}"}
    args.update(kernel_arguments(role, problem, strides, splits, split_stride, mn_view.stride()[-4:]))
    constexprs = kernel_constexprs(role, problem, precision, accumulate, kind, config)
    name = f"conv {role} {geometry} {precision} {kind} acc={accumulate}"
    return KernelVariant(name, conv_kernel, args, constexprs, config.num_warps, config.num_stages, representative)


def aot_variants():
    """Conv variants for kernels.aot: every role with every precision (one-chunk direct store),
    and every role with both multi-chunk targets (workspace, atomic); geometries, precisions and
    accumulate formats rotate through these so each role meets each of them. The kernel's
    variants multiply (role x geometry x precision x target x accumulate); the geometry only
    changes index arithmetic and the target and accumulate format only the store, so this
    covering set compiles every code path without compiling every product."""
    geometries = list(AOT_GEOMETRIES)
    precisions = list(NATURAL_INPUT)
    variants = []
    for r, role in enumerate(ROLES):
        for p, precision in enumerate(precisions):
            variants.append(_aot_variant(role, geometries[(r + p) % 4], precision, "direct", "fp32", p == r))
        for t, kind in enumerate(("workspace", "atomic")):
            rotation = 2 * r + t
            variants.append(_aot_variant(role, geometries[rotation % 4], precisions[(rotation + 1) % 4], kind,
                                         ("fp32", "fp16", "bf16")[rotation % 3]))
    return variants
