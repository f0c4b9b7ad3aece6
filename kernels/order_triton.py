"""Where the Triton kernels put their chunk partials, and the ordered sum that finishes them.

Target kinds (constexpr strings), chosen by `target_kind(reduction)`:
    "direct"     splits == 1: the single partial is the result; stored into the output
    "workspace"  fixed/splitk with splits > 1: partial s stored into workspace[s] (S, M, N);
                 `launch_ordered_sum` then adds the partials in the mode's order
    "atomic"     atomic with splits > 1: partials atomically added into a zeroed target

The ordered sum is the second stage of fixed and splitk: out[m, n] = the chunks of
workspace[:, m, n] added in index order (fixed) or in the splitk order of kernels.order (the
call's permutation table, one row per element chosen by hashing its order index); each add is
correctly rounded in the workspace dtype, so it equals kernels.gemm_emulate bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .formats import ACCUMULATE_DTYPES
from .order import FMIX_C1, FMIX_C2, MASK32, ORDER_TILE, PERMUTATIONS, permutation_table
from .reduction import Reduction
from .triton_launch import INDEX_LIMIT, INTERPRETED, Launch, cast_rounded, round_to_format

ORDERED_SUM_BLOCK = 1024
ORDERED_SUM_WARPS = 8  # 4 elements a thread (8 a thread spill an fp64 output on sm_80)
_ORDER_TILE = tl.constexpr(ORDER_TILE)
_PERMUTATIONS = tl.constexpr(PERMUTATIONS)
_MASK32 = tl.constexpr(MASK32)
_FMIX_C1 = tl.constexpr(FMIX_C1)
_FMIX_C2 = tl.constexpr(FMIX_C2)


@triton.jit
def fmix32(x):
    """murmur3's 32-bit finalizer on a uint32 tile (kernels.order.fmix32)."""
    x ^= x >> 16
    x *= _FMIX_C1
    x ^= x >> 13
    x *= _FMIX_C2
    x ^= x >> 16
    return x


@triton.jit
def _order_index(m, n, N, GRANULARITY: tl.constexpr):
    """kernels.order.order_index for int64 tiles of rows m and columns n, as uint32."""
    if GRANULARITY == "element":
        return ((m * N + n) & _MASK32).to(tl.uint32)
    elif GRANULARITY == "tile":
        tiles_n = (N + _ORDER_TILE - 1) // _ORDER_TILE
        return ((m // _ORDER_TILE) * tiles_n + n // _ORDER_TILE).to(tl.uint32)
    else:
        return (m * 0).to(tl.uint32)


@triton.jit
def _chunk(order_ptrs, position, mask, ORDERED: tl.constexpr):
    """The chunk added at `position`, as int64: workspace offsets reach (S-1)*M*N >= 2**31."""
    if ORDERED:
        return tl.load(order_ptrs + position, mask=mask, other=0).to(tl.int64)
    else:
        return tl.zeros([1], tl.int64) + position


@triton.jit
def _add_chunk(total, ws_ptr, order_ptrs, position, stride_ws, offs, mask, ORDERED: tl.constexpr,
               ACCUMULATE: tl.constexpr):
    """total + the chunk at `position`, rounded to the workspace's format."""
    chunk = _chunk(order_ptrs, position, mask, ORDERED)
    term = tl.load(ws_ptr + chunk * stride_ws + offs, mask=mask, other=0.0).to(tl.float32)
    return round_to_format(total + term, ACCUMULATE)


@triton.jit(do_not_specialize=["key"])
def ordered_sum_kernel(
    ws_ptr, table_ptr, out_ptr, M, N, SPLITS, stride_ws, stride_om, stride_on, key,
    ORDERED: tl.constexpr, GRANULARITY: tl.constexpr, ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr,
):
    """out = chunk partials of a contiguous (S, M, N) workspace added in order, per element.

    ORDERED=False adds chunks 0, 1, ..., S-1. ORDERED=True reads each element's order from row
    fmix32(key ^ order index) mod PERMUTATIONS of the call's (PERMUTATIONS, S) table.
    """
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    m = offs // N
    n = offs % N
    if ORDERED:
        row = fmix32(_order_index(m, n, N, GRANULARITY) ^ key.to(tl.uint32)) % _PERMUTATIONS
        order_ptrs = table_ptr + row.to(tl.int64) * SPLITS
    else:
        order_ptrs = table_ptr
    total = tl.load(ws_ptr + _chunk(order_ptrs, 0, mask, ORDERED) * stride_ws + offs, mask=mask, other=0.0)
    total = total.to(tl.float32)
    if INTERPRETED:  # no range() over runtime bounds there (kernels.triton_launch)
        position = 1
        while position < SPLITS:
            total = _add_chunk(total, ws_ptr, order_ptrs, position, stride_ws, offs, mask, ORDERED, ACCUMULATE)
            position += 1
    else:
        for position in range(1, SPLITS):
            total = _add_chunk(total, ws_ptr, order_ptrs, position, stride_ws, offs, mask, ORDERED, ACCUMULATE)
    tl.store(out_ptr + m * stride_om + n * stride_on, cast_rounded(total, out_ptr.dtype.element_ty), mask=mask)


_WORKSPACE_FORMATS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def launch_ordered_sum(
    workspace: torch.Tensor, out: torch.Tensor, *, ordered: bool, key: int, granularity: str
) -> None:
    """Add the chunks of a contiguous (S, M, N) workspace into out (M, N), per element, in order;
    `out` may have any strides."""
    if workspace.dim() != 3 or not workspace.is_contiguous():
        raise ValueError(f"workspace must be a contiguous (S, M, N) tensor, got shape {tuple(workspace.shape)}")
    if workspace.dtype not in _WORKSPACE_FORMATS:
        raise TypeError(f"workspace dtype {workspace.dtype} is not allowed; use float32, float16 or bfloat16")
    splits, m, n = workspace.shape
    if tuple(out.shape) != (m, n):
        raise ValueError(f"out has shape {tuple(out.shape)}; expected {(m, n)} to match the workspace")
    if m * n == 0:
        return
    grid = (triton.cdiv(m * n, ORDERED_SUM_BLOCK),)
    arguments = {"ws_ptr": workspace, "table_ptr": _device_table(key, splits, workspace.device) if ordered else None,
                 "out_ptr": out, "M": m, "N": n, "SPLITS": splits, "stride_ws": workspace.stride(0),
                 "stride_om": out.stride(0), "stride_on": out.stride(1), "key": key}
    constexprs = {"ORDERED": ordered, "GRANULARITY": granularity, "ACCUMULATE": _WORKSPACE_FORMATS[workspace.dtype],
                  "BLOCK": ORDERED_SUM_BLOCK}
    Launch(ordered_sum_kernel, grid, arguments, constexprs, ORDERED_SUM_WARPS).run()


def _device_table(key: int, splits: int, device: torch.device) -> torch.Tensor:
    """The call's permutation table as int32 on `device`. Built on the host (kernels.order holds
    the one definition) and copied from pinned memory without blocking, so a splitk call never
    waits for the GPU to drain its queue."""
    table = permutation_table(key, splits).to(torch.int32)
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table.to(device)


def target_kind(reduction: Reduction) -> str:
    """Where a kernel's chunk partials go under `reduction` (see the module docstring)."""
    if reduction.splits == 1:
        return "direct"
    return "atomic" if reduction.mode == "atomic" else "workspace"


@dataclass(frozen=True)
class ReductionTarget:
    """The tensor a kernel writes its partials into; split_stride is the element stride between
    chunks (0 unless kind == "workspace")."""

    kind: str
    tensor: torch.Tensor
    split_stride: int


def _atomic_dtype(accumulate: str) -> torch.dtype:
    # the interpreter has no bf16 atomic add: an fp32 target, rounded to bf16 once at the end
    return torch.float32 if INTERPRETED and accumulate == "bf16" else ACCUMULATE_DTYPES[accumulate]


def allocate_target(reduction: Reduction, m: int, n: int, out_dtype: torch.dtype, device) -> ReductionTarget:
    """The direct output, a (splits, m, n) workspace or a zeroed atomic target for `reduction`."""
    if m * n >= INDEX_LIMIT:
        raise ValueError(f"output of {m} x {n} elements; the Triton kernels allow fewer than 2**31")
    kind = target_kind(reduction)
    if kind == "direct":
        return ReductionTarget(kind, torch.empty(m, n, dtype=out_dtype, device=device), 0)
    if kind == "atomic":
        return ReductionTarget(kind, torch.zeros(m, n, dtype=_atomic_dtype(reduction.accumulate), device=device), 0)
    workspace = torch.empty(reduction.splits, m, n, dtype=ACCUMULATE_DTYPES[reduction.accumulate], device=device)
    return ReductionTarget(kind, workspace, workspace.stride(0))


def finish_target(target: ReductionTarget, reduction: Reduction, key: int, out_dtype: torch.dtype) -> torch.Tensor:
    """The (m, n) result in out_dtype from a target the kernel has filled."""
    if target.kind == "direct":
        return target.tensor
    if target.kind == "atomic":
        return target.tensor.to(ACCUMULATE_DTYPES[reduction.accumulate]).to(out_dtype)
    _, m, n = target.tensor.shape
    out = torch.empty(m, n, dtype=out_dtype, device=target.tensor.device)
    launch_ordered_sum(
        target.tensor, out, ordered=reduction.mode == "splitk", key=key, granularity=reduction.granularity
    )
    return out
