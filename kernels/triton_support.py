"""Triton pieces shared by the reduction-order kernels (GEMM and convolution).

A kernel computes, for each K chunk s of a reduction, an fp32 partial sum of products of
operands rounded to `precision`; the partial is rounded to the `accumulate` format and lands in
a *target*; the host then *finishes* the target into the output. This module holds every step
of that contract except the main loop, so all kernels share one definition of it.

Format codes (constexpr strings): "fp32", "tf32", "fp16", "bf16".
Target kinds (constexpr strings), chosen by `target_kind(reduction)`:
    "direct"     splits == 1: the single partial is the result; stored into the output
    "workspace"  fixed/splitk with splits > 1: partial s stored into workspace[s] (S, M, N);
                 `launch_ordered_sum` then adds the partials in the mode's order
    "atomic"     atomic with splits > 1: partials atomically added into a zeroed target

Host API
    jit_is_interpreted() -> bool
        True when functions decorated with triton.jit now are InterpretedFunctions.
    INTERPRETED: tl.constexpr
        jit_is_interpreted() at import; kernels branch on it for the interpreter's gaps.
    check_index_range(name, tensor)
        ValueError when a tensor spans 2**31 elements or more (kernels use int32 tile offsets).
    target_kind(reduction) -> str
    ReductionTarget(kind, tensor, split_stride)
        where a kernel writes its partials; split_stride is the element stride between
        chunks (0 unless kind == "workspace").
    allocate_target(reduction, m, n, out_dtype, device) -> ReductionTarget
        ValueError for outputs of 2**31 elements or more and for splits > MAX_SPLITS (65535:
        chunks are grid axis 1).
    finish_target(target, reduction, key, out_dtype) -> Tensor (m, n)
        reduce a workspace in order, or convert an atomic target / direct output.
    launch_ordered_sum(workspace, out, *, ordered, key, granularity)
        second stage: out[m, n] = sum over chunks of workspace[:, m, n], added in index order
        (ordered=False, fixed mode) or in the splitk order of kernels.order (ordered=True: the
        call's permutation table, one row per element chosen by hashing its order index); each
        add correctly rounded in the workspace dtype; `out` may have any strides.

JIT API (call from @triton.jit kernels)
    round_to_format(x, FORMAT)    fp32 tile -> fp32 tile holding x rounded to FORMAT (RTNE)
    cast_rounded(x, DTYPE)        fp32 tile -> DTYPE, correctly rounded (also under the interpreter)
    dot_operand(x, PRECISION)     loaded tile (any float dtype) -> operand for `mma`
    mma(a, b, acc, PRECISION)     acc + a @ b with the tensor-core mode that PRECISION implies
    chunk_range(pid_k, K, SPLITS) -> (lo, hi): chunk pid_k = [pid_k*K//SPLITS, (pid_k+1)*K//SPLITS)
    store_partial(acc, ptrs, mask, TARGET, ACCUMULATE)
        round the fp32 partial to ACCUMULATE and store it (direct/workspace, cast to the
        pointer's dtype) or atomically add it (atomic) at `ptrs`; workspace callers add
        pid_k * split_stride to their pointers.
    fmix32(x)                     murmur3's finalizer on uint32 tiles (kernels.order.fmix32)

Triton interpreter deviations (TRITON_INTERPRET=1), all confined to this module:
  * fp32 -> bf16 casts truncate instead of rounding to nearest even, so bf16 rounding is done
    on the fp32 bit pattern (exactly as kernels.formats.round_to_tf32 does for tf32) before
    the then-exact cast;
  * `tl.dot` on bf16 multiplies the raw bit patterns (bf16 is stored as uint16 there), so bf16
    operands are rounded to bf16 and kept in fp32: the values are exact in fp32 and their
    products exact, so the arithmetic is unchanged (fp16 dots are right: numpy forms them in fp32);
  * bf16 atomic adds are unsupported ("Unsupported data type"), so bf16 atomic targets are fp32
    there: each partial is still rounded to bf16 before it is added, but the running sum is
    rounded to bf16 only once at the end (fp16 atomics work and round every add);
  * tf32 is not emulated by the interpreter's dot; the operands are already exact tf32 values
    (rounded here), so an fp32 dot of them gives the same products.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .formats import ACCUMULATE_DTYPES
from .order import MASK32, ORDER_TILE, PERMUTATIONS, permutation_table
from .reduction import Reduction

ORDERED_SUM_BLOCK = 1024
ORDERED_SUM_WARPS = 4


def jit_is_interpreted() -> bool:
    """True when triton.jit, called now, makes InterpretedFunctions (TRITON_INTERPRET=1)."""
    from triton.runtime.interpreter import InterpretedFunction

    def probe():
        pass

    return isinstance(triton.jit(probe), InterpretedFunction)


INTERPRETED = tl.constexpr(jit_is_interpreted())
_ORDER_TILE = tl.constexpr(ORDER_TILE)
_PERMUTATIONS = tl.constexpr(PERMUTATIONS)
_MASK32 = tl.constexpr(MASK32)
_FMIX_C1 = tl.constexpr(0x85EBCA6B)
_FMIX_C2 = tl.constexpr(0xC2B2AE35)


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _round_mantissa(x, DROPPED: tl.constexpr):
    """fp32 -> fp32 with the low DROPPED mantissa bits rounded off, ties to even; NaN kept."""
    bits = x.to(tl.int32, bitcast=True)
    odd = (bits >> DROPPED) & 1
    rounded = (bits + ((1 << (DROPPED - 1)) - 1) + odd) & ~((1 << DROPPED) - 1)
    return tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))


@triton.jit
def round_to_format(x, FORMAT: tl.constexpr):
    """fp32 tile -> fp32 tile holding x rounded to FORMAT (round to nearest, ties to even)."""
    if FORMAT == "tf32":
        return _round_mantissa(x, 13)
    elif FORMAT == "fp16":
        return x.to(tl.float16).to(tl.float32)
    elif FORMAT == "bf16":
        if INTERPRETED:
            # the interpreter's fp32 -> bf16 cast truncates
            return _round_mantissa(x, 16)
        else:
            return x.to(tl.bfloat16).to(tl.float32)
    else:
        return x


@triton.jit
def cast_rounded(x, DTYPE: tl.constexpr):
    """fp32 tile -> DTYPE, round to nearest even (the interpreter's bf16 cast is made exact first)."""
    if INTERPRETED and DTYPE == tl.bfloat16:
        return _round_mantissa(x, 16).to(tl.bfloat16)
    else:
        return x.to(DTYPE)


@triton.jit
def dot_operand(x, PRECISION: tl.constexpr):
    """A loaded tile as the multiplier sees it: rounded to PRECISION.

    fp32/tf32 operands are fp32 (tf32 values rounded on the bit pattern); fp16/bf16 operands are
    fp16/bf16 for the tensor cores, except bf16 under the interpreter: fp32 holding bf16 values.
    """
    if PRECISION == "fp16":
        if x.dtype != tl.float16:
            x = x.to(tl.float32).to(tl.float16)
        return x
    elif PRECISION == "bf16":
        if x.dtype != tl.bfloat16:
            x = cast_rounded(x.to(tl.float32), tl.bfloat16)
        if INTERPRETED:
            x = x.to(tl.float32)
        return x
    else:
        return round_to_format(x.to(tl.float32), PRECISION)


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b in fp32: exact fp32 products for fp32, tf32 tensor cores for tf32 operands."""
    if PRECISION == "tf32":
        return tl.dot(a, b, acc, input_precision="tf32")
    elif a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def chunk_range(pid_k, K, SPLITS):
    """The balanced K chunk of program pid_k (kernels.order.chunk_bounds), as int32 bounds."""
    lo = (pid_k.to(tl.int64) * K // SPLITS).to(tl.int32)
    hi = ((pid_k + 1).to(tl.int64) * K // SPLITS).to(tl.int32)
    return lo, hi


@triton.jit
def store_partial(acc, ptrs, mask, TARGET: tl.constexpr, ACCUMULATE: tl.constexpr):
    """Round a chunk's fp32 partial to ACCUMULATE and store it, or atomically add it, at ptrs."""
    value = cast_rounded(round_to_format(acc, ACCUMULATE), ptrs.dtype.element_ty)
    if TARGET == "atomic":
        tl.atomic_add(ptrs, value, mask=mask, sem="relaxed")
    else:
        tl.store(ptrs, value, mask=mask)


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


@triton.jit(do_not_specialize=["key"])
def _ordered_sum_kernel(
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
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for position in range(0, SPLITS):
        if ORDERED:
            chunk = tl.load(order_ptrs + position, mask=mask, other=0).to(tl.int64)
        else:
            chunk = position
        term = tl.load(ws_ptr + chunk * stride_ws + offs, mask=mask, other=0.0).to(tl.float32)
        if position == 0:
            total = term
        else:
            total = round_to_format(total + term, ACCUMULATE)
    tl.store(out_ptr + m * stride_om + n * stride_on, cast_rounded(total, out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side


INDEX_LIMIT = 2**31
MAX_SPLITS = 65535  # chunks are grid axis 1, which CUDA limits to 65535 programs


def check_index_range(name: str, tensor: torch.Tensor) -> None:
    """Kernels index tiles with int32 offsets: reject tensors whose last element lies past 2**31."""
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(tensor.shape, tensor.stride()))
    if tensor.numel() and extent >= INDEX_LIMIT:
        raise ValueError(
            f"{name} spans {extent} elements; the Triton kernels index with int32 and allow fewer than 2**31"
        )


def target_kind(reduction: Reduction) -> str:
    """Where a kernel's chunk partials go under `reduction` (see the module docstring)."""
    if reduction.splits == 1:
        return "direct"
    return "atomic" if reduction.mode == "atomic" else "workspace"


@dataclass(frozen=True)
class ReductionTarget:
    """The tensor a kernel writes its partials into, and how chunks are laid out in it."""

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
    if reduction.splits > MAX_SPLITS:
        raise ValueError(f"splits={reduction.splits}: the Triton kernels allow at most {MAX_SPLITS} (CUDA grid limit)")
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


_WORKSPACE_FORMATS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def launch_ordered_sum(
    workspace: torch.Tensor, out: torch.Tensor, *, ordered: bool, key: int, granularity: str
) -> None:
    """Add the chunks of a contiguous (S, M, N) workspace into out (M, N), per element, in order."""
    if workspace.dim() != 3 or not workspace.is_contiguous():
        raise ValueError(f"workspace must be a contiguous (S, M, N) tensor, got shape {tuple(workspace.shape)}")
    if workspace.dtype not in _WORKSPACE_FORMATS:
        raise TypeError(f"workspace dtype {workspace.dtype} is not allowed; use float32, float16 or bfloat16")
    splits, m, n = workspace.shape
    if tuple(out.shape) != (m, n):
        raise ValueError(f"out has shape {tuple(out.shape)}; expected {(m, n)} to match the workspace")
    if m * n == 0:
        return
    table = permutation_table(key, splits, workspace.device).to(torch.int32) if ordered else None
    grid = (triton.cdiv(m * n, ORDERED_SUM_BLOCK),)
    _ordered_sum_kernel[grid](
        workspace, table, out, m, n, splits, workspace.stride(0), out.stride(0), out.stride(1), key,
        ORDERED=ordered, GRANULARITY=granularity, ACCUMULATE=_WORKSPACE_FORMATS[workspace.dtype],
        BLOCK=ORDERED_SUM_BLOCK, num_warps=ORDERED_SUM_WARPS,
    )


def aot_variants():
    """The ordered-sum kernel for kernels.aot: fixed per accumulate format, splitk per granularity."""
    from .aot import KernelVariant

    m = n = 4096
    splits = 8
    cases = [(False, "call", acc) for acc in ("fp32", "fp16", "bf16")]
    cases += [(True, granularity, "fp32") for granularity in ("call", "tile", "element")]
    cases += [(True, "element", acc) for acc in ("fp16", "bf16")]
    variants = []
    for ordered, granularity, accumulate in cases:
        args = {
            "ws_ptr": f"*{accumulate}", "out_ptr": "*fp32", "M": m, "N": n, "SPLITS": splits,
            "stride_ws": m * n, "stride_om": n, "stride_on": 1, "key": 0x12345678,
        }
        constexprs = {
            "ORDERED": ordered, "GRANULARITY": granularity, "ACCUMULATE": accumulate,
            "BLOCK": ORDERED_SUM_BLOCK,
        }
        if ordered:
            args["table_ptr"] = "*i32"
        else:
            constexprs["table_ptr"] = None
        name = f"ordered_sum {'splitk ' + granularity if ordered else 'fixed'} acc={accumulate}"
        representative = (ordered, granularity, accumulate) in ((False, "call", "fp32"), (True, "element", "bf16"))
        variants.append(
            KernelVariant(name, _ordered_sum_kernel, args, constexprs, ORDERED_SUM_WARPS, 1, representative)
        )
    return variants
