"""What every Triton reduction kernel shares: operand rounding, the chunk contract, tile order
and launch configuration, and every deviation of the Triton interpreter.

A kernel computes, for each K chunk s of a reduction, an fp32 partial sum of products of
operands rounded to `precision`; `store_partial` rounds the partial to the `accumulate` format
and puts it into the reduction's target (kernels.order_triton allocates targets and finishes
them into the output).

Format codes (constexpr strings): "fp32", "tf32", "fp16", "bf16".

Host API
    jit_is_interpreted() -> bool   True when triton.jit now makes InterpretedFunctions
    INTERPRETED: tl.constexpr      jit_is_interpreted() at import; kernels branch on it
    as_kernel_input(tensor)        float64 operands as float32 (the only rounding path anyway)
    check_index_range(name, tensor) ValueError for tensors spanning 2**31 elements or more
    LaunchConfig, INTERPRETER_CONFIG, pick_tile(tiles, m, n, splits), pipeline_stages(...)
    Launch(kernel, grid, args, constexprs, num_warps, num_stages).run()
    recording() -> list[Launch]    inside the block, Launch.run records instead of launching

Launch configs are a pure function of the problem (formats, sizes, splits, target kind), never
of the GPU it runs on: a shape runs the same tiles, BLOCK_K and K order on every GPU model, so
fixed-mode results of two GPUs can agree (in principle: the tensor cores' own order inside an
instruction is the hardware's).

JIT API (call from @triton.jit kernels)
    grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M) -> (pid_m, pid_n)
    round_to_format(x, FORMAT)    fp32 tile -> fp32 tile holding x rounded to FORMAT (RTNE)
    cast_rounded(x, DTYPE)        fp32 tile -> DTYPE, correctly rounded (also under the interpreter)
    dot_operand(x, PRECISION)     loaded tile (any float dtype) -> operand for `mma`
    mma(a, b, acc, PRECISION)     acc + a @ b with the tensor-core mode that PRECISION implies
    chunk_range(pid_k, K, SPLITS) -> (lo, hi): chunk pid_k = [pid_k*K//SPLITS, (pid_k+1)*K//SPLITS)
    store_partial(acc, ptrs, mask, TARGET, ACCUMULATE)
        round the fp32 partial to ACCUMULATE and store it ("direct"/"workspace", cast to the
        pointer's dtype) or atomically add it ("atomic") at `ptrs`

Triton interpreter deviations (TRITON_INTERPRET=1), all handled here or in kernels.order_triton:
  * fp32 -> bf16 casts truncate instead of rounding to nearest even, so bf16 rounding is done
    on the fp32 bit pattern (exactly as kernels.formats.round_to_tf32 does for tf32) before
    the then-exact cast;
  * `tl.dot` on bf16 multiplies the raw bit patterns (bf16 is stored as uint16 there), so bf16
    operands are rounded to bf16 and kept in fp32: the values are exact in fp32 and their
    products exact, so the arithmetic is unchanged (fp16 dots are right: numpy forms them in fp32);
  * bf16 atomic adds are unsupported ("Unsupported data type"), so bf16 atomic targets are fp32
    there (kernels.order_triton): each partial is still rounded to bf16 before it is added, but
    the running sum is rounded to bf16 only once at the end (fp16 atomics round every add);
  * tf32 is not emulated by the interpreter's dot; the operands are already exact tf32 values
    (rounded here), so an fp32 dot of them gives the same products;
  * one program runs at a time in numpy and multi-config autotuning fails, so every kernel
    launches with INTERPRETER_CONFIG;
  * triton 3.6's interpreter turns a loop bound into an int with int() of a 1-element array,
    which numpy >= 2.4 refuses; loops over runtime bounds are therefore `while` loops under the
    interpreter (kernels branch on INTERPRETED) and `range` loops, which Triton pipelines,
    when compiled.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl


def jit_is_interpreted() -> bool:
    """True when triton.jit, called now, makes InterpretedFunctions (TRITON_INTERPRET=1)."""
    from triton.runtime.interpreter import InterpretedFunction

    def probe():
        pass

    return isinstance(triton.jit(probe), InterpretedFunction)


INTERPRETED = tl.constexpr(jit_is_interpreted())
INDEX_LIMIT = 2**31


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Output tile (pid_m, pid_n) of program pid: GROUP_M tile rows share the B tiles they read while in L2."""
    tiles_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * tiles_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = min(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group
    return pid_m, pid_n


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


# ----------------------------------------------------------------------------- host side


def as_kernel_input(tensor: torch.Tensor) -> torch.Tensor:
    """float64 operands as float32: every operand is rounded through fp32 before its precision
    (kernels.formats.round_operand), so reading them as fp32 changes no result and keeps the
    kernels' registers and shared memory those of 4-byte inputs."""
    return tensor.float() if tensor.dtype == torch.float64 else tensor


def check_index_range(name: str, tensor: torch.Tensor) -> None:
    """Kernels index tiles with int32 offsets: reject tensors whose last element lies past 2**31."""
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(tensor.shape, tensor.stride()))
    if tensor.numel() and extent >= INDEX_LIMIT:
        raise ValueError(
            f"{name} spans {extent} elements; the Triton kernels index with int32 and allow fewer than 2**31"
        )


GROUP_M = 8
GPU_STAGES = 3
# The dtype each tensor-core format reads without converting in registers.
NATIVE_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16, "tf32": torch.float32}
# Programs a grid should have before a larger tile is chosen: one per SM of the largest GPU the
# kernels target (H100/H200 SXM). A constant, so that tiles do not depend on the GPU model.
TARGET_PROGRAMS = 132
# Shared memory the operand pipeline may take: below sm_80's 163 KiB per block, with room for
# the epilogue.
PIPELINE_BYTES = 144 * 1024
# Registers a thread may use (PTX .maxnreg). Without it, the ptxas of triton 3.6 caps some conv
# tiles at 80, 96 or 128 registers for occupancy and spills a few bytes; with it no variant
# spills (python -m kernels.aot), and registers change speed, never results.
MAX_REGISTERS = 255


@dataclass(frozen=True)
class LaunchConfig:
    """One launch configuration of a tiled reduction kernel."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int = GPU_STAGES
    group_m: int = GROUP_M
    maxnreg: int | None = MAX_REGISTERS

    def constexprs(self) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "GROUP_M": self.group_m}


# One small config under the interpreter, with several tiles per test shape so that tile edges
# and grouping are exercised.
INTERPRETER_CONFIG = LaunchConfig(block_m=32, block_n=32, block_k=32, num_warps=4, num_stages=1, group_m=2,
                                  maxnreg=None)


def pick_tile(tiles, m: int, n: int, splits: int) -> tuple:
    """The first of `tiles` ((BLOCK_M, BLOCK_N, ...), largest first) that is no taller or wider
    than the problem needs and whose grid, tiles x splits, has TARGET_PROGRAMS programs, else
    the last (smallest).

    A tile "no taller than needed" has BLOCK_M at most m rounded up to a power of two, or the
    smallest BLOCK_M offered (likewise for N): a 3-row problem gets no 128-row tile, whose idle
    rows cost registers (and made one such variant spill) for nothing.
    """
    shortest, narrowest = min(t[0] for t in tiles), min(t[1] for t in tiles)
    fitting = [t for t in tiles if t[0] <= max(triton.next_power_of_2(m), shortest)
               and t[1] <= max(triton.next_power_of_2(n), narrowest)]
    return next((t for t in fitting if triton.cdiv(m, t[0]) * triton.cdiv(n, t[1]) * splits >= TARGET_PROGRAMS),
                fitting[-1])


def pipeline_stages(block_m: int, block_n: int, block_k: int, itemsize: int) -> int:
    """GPU_STAGES, or fewer where the operand tiles of a stage (`itemsize`-byte inputs) would
    not fit PIPELINE_BYTES; stages change speed, never results."""
    stage = (block_m + block_n) * block_k * itemsize
    return max(2, min(GPU_STAGES, PIPELINE_BYTES // stage))


_RECORDER: ContextVar[list | None] = ContextVar("kernels_launch_recorder", default=None)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: runtime arguments by name (tensors, ints, None) and its constexprs."""

    kernel: object
    grid: tuple
    args: dict
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 1
    maxnreg: int | None = None

    def options(self) -> dict:
        """The compile options of this launch (what Triton's launcher takes besides arguments)."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages,
                **({"maxnreg": self.maxnreg} if self.maxnreg else {})}

    def run(self) -> None:
        """Launch the kernel, or record this launch inside `recording()`."""
        recorder = _RECORDER.get()
        if recorder is not None:
            recorder.append(self)
            return
        self.kernel[self.grid](**self.args, **self.constexprs, **self.options())


@contextmanager
def recording():
    """Collect the launches made inside the block instead of running them (the host code runs
    as usual, e.g. on meta tensors): how kernels.aot_variants learns what a call would compile."""
    launches: list[Launch] = []
    token = _RECORDER.set(launches)
    try:
        yield launches
    finally:
        _RECORDER.reset(token)
