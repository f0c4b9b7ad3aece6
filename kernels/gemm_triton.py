"""The Triton GEMM: a (M, K) @ b (K, N) with an explicit K split, operand precision and accumulate format.

Grid (output tiles, splits): program (t, s) computes the fp32 partial of K chunk s
(kernels.order.chunk_bounds) for output tile t, from operands rounded to `precision`, and hands
it to kernels.triton_launch.store_partial, which rounds it to `accumulate` and writes it to the
Reduction's target (the output, a workspace for the ordered second stage, or an atomic target).
Operands are read through their strides: transposed and sliced inputs need no copy.

Inside a chunk the tensor cores (or FMA units for fp32) fix their own summation order, which
differs from torch's; this is the one place where this backend and kernels.gemm_emulate may differ.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .order_triton import allocate_target, finish_target, target_kind
from .reduction import Reduction
from .triton_launch import (
    INTERPRETED,
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
    pipeline_stages,
    store_partial,
)


@triton.jit
def _accumulate_block(
    acc, a_ptr, b_ptr, rows, cols, k0, lo, hi, stride_am, stride_ak, stride_bk, stride_bn,
    PRECISION: tl.constexpr, BLOCK_K: tl.constexpr, MASKED: tl.constexpr,
):
    """acc + a[rows, k0:k0+BLOCK_K] @ b[k0:k0+BLOCK_K, cols], keeping only k in [lo, hi) if MASKED."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    if MASKED:
        in_chunk = (offs_k >= lo) & (offs_k < hi)
        a = tl.load(a_ptrs, mask=in_chunk[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=in_chunk[:, None], other=0.0)
    else:
        a = tl.load(a_ptrs)
        b = tl.load(b_ptrs)
    return mma(dot_operand(a, PRECISION), dot_operand(b, PRECISION), acc, PRECISION)


@triton.jit
def _dot_step(acc, a_ptrs, b_ptrs, PRECISION: tl.constexpr):
    """acc + a @ b for whole, in-bounds tiles at a_ptrs and b_ptrs."""
    return mma(dot_operand(tl.load(a_ptrs), PRECISION), dot_operand(tl.load(b_ptrs), PRECISION), acc, PRECISION)


@triton.jit
def gemm_kernel(
    a_ptr, b_ptr, target_ptr, M, N, K, SPLITS,
    stride_am, stride_ak, stride_bk, stride_bn, stride_ts, stride_tm, stride_tn,
    PRECISION: tl.constexpr, ACCUMULATE: tl.constexpr, TARGET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One output tile's partial over one K chunk, stored to the Reduction's target.

    The chunk [lo, hi) is walked as a masked head up to the first multiple of BLOCK_K, unmasked
    aligned blocks, and a masked tail: chunk bounds are arbitrary, and only aligned unmasked
    blocks let the compiler vectorize and pipeline the loads. The aligned blocks advance their
    pointers rather than recompute them, which keeps 128x256 tiles free of register spills.
    """
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # rows/columns past the edge wrap around so every load is in bounds; the store masks them
    rows = offs_m % M
    cols = offs_n % N
    lo, hi = chunk_range(pid_k, K, SPLITS)
    aligned_lo = tl.cdiv(lo, BLOCK_K) * BLOCK_K
    aligned_hi = (hi // BLOCK_K) * BLOCK_K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if lo < min(aligned_lo, hi):
        acc = _accumulate_block(acc, a_ptr, b_ptr, rows, cols, aligned_lo - BLOCK_K, lo, hi,
                                stride_am, stride_ak, stride_bk, stride_bn, PRECISION, BLOCK_K, True)
    offs_k = aligned_lo + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    if INTERPRETED:  # no range() over runtime bounds there (kernels.triton_launch)
        k0 = aligned_lo
        while k0 < aligned_hi:
            acc = _dot_step(acc, a_ptrs, b_ptrs, PRECISION)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
            k0 += BLOCK_K
    else:
        for _ in range(aligned_lo, aligned_hi, BLOCK_K):
            acc = _dot_step(acc, a_ptrs, b_ptrs, PRECISION)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
    if max(aligned_hi, aligned_lo) < hi:
        acc = _accumulate_block(acc, a_ptr, b_ptr, rows, cols, aligned_hi, lo, hi,
                                stride_am, stride_ak, stride_bk, stride_bn, PRECISION, BLOCK_K, True)

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    target = target_ptr + pid_k.to(tl.int64) * stride_ts + offs_m[:, None] * stride_tm + offs_n[None, :] * stride_tn
    store_partial(acc, target, mask, TARGET, ACCUMULATE)


# Output tiles, largest first (kernels.triton_launch.pick_tile chooses by the grid's size).
TILES = ((128, 256), (128, 128), (64, 128), (64, 64))
# BLOCK_K by operand format: 128 bytes of K per operand row for 16-bit operands, 32 for fp32 and
# tf32 (FMA, and tf32 mma steps of 8). Never by the input dtype, the shape or the GPU, so a
# value's K order does not depend on how it was stored.
BLOCK_K = {"fp16": 64, "bf16": 64, "tf32": 32, "fp32": 32}
GPU_WARPS = 8


def gemm_config(precision: str, a_dtype: torch.dtype, b_dtype: torch.dtype, m: int, n: int, splits: int,
                kind: str) -> LaunchConfig:
    """The GPU config of a GEMM: tiles by operand format, never by the GPU.

    128x256 tiles only where ptxas keeps them free of register spills on sm_80 and sm_90 under
    triton 3.6 and 3.8 (kernels.aot): tensor-core operands read in their own dtype (no
    conversion in registers) and a plain-store epilogue (atomic adds are not vectorized on
    sm_80). Pipeline stages shrink for wide input dtypes so that they fit shared memory.
    """
    wide = NATIVE_DTYPE.get(precision) == a_dtype == b_dtype and kind != "atomic"
    block_m, block_n = pick_tile(TILES if wide else TILES[1:], m, n, splits)
    itemsize = max(a_dtype.itemsize, b_dtype.itemsize)
    block_k = BLOCK_K[precision]
    return LaunchConfig(block_m, block_n, block_k, GPU_WARPS, pipeline_stages(block_m, block_n, block_k, itemsize))


def gemm(a: torch.Tensor, b: torch.Tensor, reduction: Reduction, key: int, out_dtype: torch.dtype) -> torch.Tensor:
    """a (M, K) @ b (K, N) under `reduction` on the Triton kernels; `key` is the splitk call key."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return torch.zeros(m, n, dtype=out_dtype, device=a.device)
    a, b = as_kernel_input(a), as_kernel_input(b)
    check_index_range("a", a)
    check_index_range("b", b)
    kind = target_kind(reduction)
    config = INTERPRETER_CONFIG if INTERPRETED else gemm_config(
        reduction.precision, a.dtype, b.dtype, m, n, reduction.splits, kind)
    target = allocate_target(reduction, m, n, out_dtype, a.device)
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), reduction.splits)
    arguments = {
        "a_ptr": a, "b_ptr": b, "target_ptr": target.tensor, "M": m, "N": n, "K": k, "SPLITS": reduction.splits,
        "stride_am": a.stride(0), "stride_ak": a.stride(1), "stride_bk": b.stride(0), "stride_bn": b.stride(1),
        "stride_ts": target.split_stride, "stride_tm": target.tensor.stride(-2), "stride_tn": target.tensor.stride(-1),
    }
    constexprs = {"PRECISION": reduction.precision, "ACCUMULATE": reduction.accumulate, "TARGET": kind,
                  **config.constexprs()}
    Launch(gemm_kernel, grid, arguments, constexprs, config.num_warps, config.num_stages, config.maxnreg).run()
    return finish_target(target, reduction, key, out_dtype)
