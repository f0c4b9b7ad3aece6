"""The Triton GEMM: a (M, K) @ b (K, N) with an explicit K split, operand precision and accumulate format.

Grid (output tiles, splits): program (t, s) computes the fp32 partial of K chunk s
(kernels.order.chunk_bounds) for output tile t, from operands rounded to `precision`, and hands
it to kernels.triton_support.store_partial, which rounds it to `accumulate` and writes it to the
Reduction's target (the output, a workspace for the ordered second stage, or an atomic target).
Operands are read through their strides: transposed and sliced inputs need no copy.

Inside a chunk the tensor cores (or FMA units for fp32) fix their own summation order, which
differs from torch's; this is the one place where this backend and kernels.emulate may differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from .reduction import Reduction
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
def gemm_kernel(
    a_ptr, b_ptr, target_ptr, M, N, K, SPLITS,
    stride_am, stride_ak, stride_bk, stride_bn, stride_ts, stride_tm, stride_tn,
    PRECISION: tl.constexpr, ACCUMULATE: tl.constexpr, TARGET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One output tile's partial over one K chunk, stored to the Reduction's target.

    The chunk [lo, hi) is walked as a masked head up to the first multiple of BLOCK_K, unmasked
    aligned blocks, and a masked tail: chunk bounds are arbitrary, and only aligned unmasked
    blocks let the compiler vectorize and pipeline the loads.
    """
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    # grouped tile order: GROUP_M tile rows share the b tiles they read while in L2
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * tiles_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group

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
    for k0 in range(aligned_lo, aligned_hi, BLOCK_K):
        acc = _accumulate_block(acc, a_ptr, b_ptr, rows, cols, k0, lo, hi,
                                stride_am, stride_ak, stride_bk, stride_bn, PRECISION, BLOCK_K, False)
    if max(aligned_hi, aligned_lo) < hi:
        acc = _accumulate_block(acc, a_ptr, b_ptr, rows, cols, aligned_hi, lo, hi,
                                stride_am, stride_ak, stride_bk, stride_bn, PRECISION, BLOCK_K, True)

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    target = target_ptr + pid_k.to(tl.int64) * stride_ts + offs_m[:, None] * stride_tm + offs_n[None, :] * stride_tn
    store_partial(acc, target, mask, TARGET, ACCUMULATE)


@dataclass(frozen=True)
class GemmConfig:
    """One launch configuration of gemm_kernel."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    def constexprs(self) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "GROUP_M": self.group_m}


# The interpreter runs one program at a time in numpy: one small config, several tiles per
# test shape so tile edges and grouping are exercised (multi-config autotuning fails there).
INTERPRETER_CONFIG = GemmConfig(block_m=32, block_n=32, block_k=32, group_m=2, num_warps=4, num_stages=1)
# Output tiles, largest first; the first that gives every SM a program is used.
TILES = ((128, 256), (128, 128), (64, 128), (64, 64))
K_BYTES = 128  # one K step reads 128 bytes per operand row: BLOCK_K 64 for 2-byte inputs, 32 for fp32
GPU_WARPS = 8
GPU_STAGES = 3


def gpu_launch_config(
    precision: str, itemsize: int, m: int, n: int, splits: int, sm_count: int, *, atomic: bool = False
) -> GemmConfig:
    """The fixed GPU config for a problem: no autotuning, so a shape always runs the same code.

    Tiles: the largest allowed tile whose grid (tiles x splits) gives each of `sm_count` SMs a
    program, else the smallest. 128x256 is allowed only where ptxas keeps it free of register
    spills on sm_80 and sm_90 (see kernels.aot): tensor-core operands straight from memory
    (tf32, or fp16/bf16 from 2-byte inputs) and a plain-store epilogue (atomic adds are not
    vectorized on sm_80). BLOCK_K keeps a pipeline stage's shared memory independent of the
    input dtype (`itemsize` bytes), so three stages fit on sm_80 and sm_90.
    """
    wide = precision == "tf32" or (precision in ("fp16", "bf16") and itemsize == 2)
    tiles = TILES if wide and not atomic else TILES[1:]
    block_m, block_n = next(
        (tile for tile in tiles if triton.cdiv(m, tile[0]) * triton.cdiv(n, tile[1]) * splits >= sm_count),
        tiles[-1],
    )
    return GemmConfig(block_m, block_n, max(16, K_BYTES // itemsize), 8, GPU_WARPS, GPU_STAGES)


def launch_config(
    precision: str, itemsize: int, m: int, n: int, splits: int, sm_count: int, *, atomic: bool = False
) -> GemmConfig:
    """INTERPRETER_CONFIG under the Triton interpreter, else gpu_launch_config."""
    if INTERPRETED:
        return INTERPRETER_CONFIG
    return gpu_launch_config(precision, itemsize, m, n, splits, sm_count, atomic=atomic)


@lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 for the interpreter's CPU tensors)."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def gemm(a: torch.Tensor, b: torch.Tensor, reduction: Reduction, key: int, out_dtype: torch.dtype) -> torch.Tensor:
    """a (M, K) @ b (K, N) under `reduction` on the Triton kernels; `key` is the splitk call key."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return torch.zeros(m, n, dtype=out_dtype, device=a.device)
    check_index_range("a", a)
    check_index_range("b", b)
    itemsize = max(a.element_size(), b.element_size())
    config = launch_config(
        reduction.precision, itemsize, m, n, reduction.splits, device_sm_count(a.device),
        atomic=target_kind(reduction) == "atomic",
    )
    target = allocate_target(reduction, m, n, out_dtype, a.device)
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), reduction.splits)
    gemm_kernel[grid](
        a, b, target.tensor, m, n, k, reduction.splits,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        target.split_stride, target.tensor.stride(-2), target.tensor.stride(-1),
        PRECISION=reduction.precision, ACCUMULATE=reduction.accumulate, TARGET=target.kind,
        num_warps=config.num_warps, num_stages=config.num_stages, **config.constexprs(),
    )
    return finish_target(target, reduction, key, out_dtype)


AOT_SM_COUNT = 132  # an H100 SXM: picks the tile a 4096^2 output gets on it
AOT_SIZE = 4096


def _aot_variant(precision, input_format, kind, accumulate, a_transposed=False, representative=False):
    from .aot import KernelVariant

    m = n = k = AOT_SIZE
    splits = 1 if kind == "direct" else 8
    itemsize = 4 if input_format == "fp32" else 2
    config = gpu_launch_config(precision, itemsize, m, n, splits, AOT_SM_COUNT, atomic=kind == "atomic")
    target_format = input_format if kind == "direct" else accumulate
    stride_am, stride_ak = (1, m) if a_transposed else (k, 1)
    args = {
        "a_ptr": f"*{input_format}", "b_ptr": f"*{input_format}", "target_ptr": f"*{target_format}",
        "M": m, "N": n, "K": k, "SPLITS": splits,
        "stride_am": stride_am, "stride_ak": stride_ak, "stride_bk": n, "stride_bn": 1,
        "stride_ts": m * n if kind == "workspace" else 0, "stride_tm": n, "stride_tn": 1,
    }
    constexprs = {"PRECISION": precision, "ACCUMULATE": accumulate, "TARGET": kind, **config.constexprs()}
    name = f"gemm {precision} in={input_format} {kind} acc={accumulate}" + (" a^T" if a_transposed else "")
    return KernelVariant(name, gemm_kernel, args, constexprs, config.num_warps, config.num_stages, representative)


NATURAL_INPUT = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "bf16": "bf16"}
AOT_REPRESENTATIVE = {
    ("fp32", "direct", "fp32"), ("tf32", "workspace", "fp32"), ("fp16", "direct", "fp32"),
    ("bf16", "direct", "fp32"), ("fp16", "workspace", "fp16"), ("bf16", "atomic", "bf16"),
}


def aot_variants():
    """GEMM variants for kernels.aot: precision x target kind x accumulate on natural inputs, plus
    fp32 inputs rounded to fp16/bf16 and the transposed-a (weight-gradient) layout."""
    variants = [
        _aot_variant(precision, NATURAL_INPUT[precision], kind, accumulate,
                     representative=(precision, kind, accumulate) in AOT_REPRESENTATIVE)
        for precision in NATURAL_INPUT
        for kind in ("direct", "workspace", "atomic")
        for accumulate in ("fp32", "fp16", "bf16")
    ]
    variants += [_aot_variant(precision, "fp32", "workspace", "fp32") for precision in ("fp16", "bf16")]
    variants += [
        _aot_variant(precision, NATURAL_INPUT[precision], "workspace", "fp32", a_transposed=True,
                     representative=precision == "fp16")
        for precision in NATURAL_INPUT
    ]
    return variants
