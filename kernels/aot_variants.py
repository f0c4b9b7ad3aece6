"""The compiled forms of the Triton kernels: what `python -m kernels.aot` checks without a GPU.

A variant names one kernel, example runtime arguments and its constexprs (a kernel with a dot
names its operand precision in a PRECISION constexpr). Variants are not written by hand: a call
of the runtime launcher (kernels.gemm_triton.gemm, kernels.conv_triton.launch) runs on meta
tensors inside kernels.triton_launch.recording(), and each launch it would make becomes a
variant. So the registry compiles exactly what the runtime launches for those calls, and
`gemm_call_variants` / `conv_call_variants` tell any caller (a benchmark, a GPU check) which
variants its own calls will compile.

The registry covers every input dtype x operand precision x target kind (one chunk stored
directly, chunks in a workspace, atomic adds) of the GEMM and of each conv role, with the
accumulate formats rotating so that each meets every target kind, fixed and splitk workspaces
alternating (their ordered sums differ), the conv geometries of the paper's networks rotating,
and the transposed-a layout of a weight gradient. The accumulate format and the mode only
change the epilogue and the second stage, so this covering set compiles every code path and
every tile a format can get without compiling every product.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from . import conv_triton, gemm_triton
from .calls import CallCounter, counting
from .conv_triton import ConvProblem
from .reduction import KERNEL_ACCUMULATES, KERNEL_PRECISIONS, Reduction
from .triton_launch import Launch, recording

GEMM_SIZE = 4096
SPLITS = 8
KEY = 0x12345678  # any splitk call key: the key is not specialized on
INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64 is read as float32
POINTER_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                 torch.int32: "i32"}
NATURAL_INPUT = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The layer geometries of the paper's networks at ConstNet-16-10's batch 128 and widths: 3x3
# blocks at stride 1 and 2, 1x1 widening shortcuts at stride 1 and 2.
CONV_GEOMETRIES = {
    "3x3 s1": ConvProblem(128, 160, 32, 32, 160, (3, 3), (1, 1), (1, 1)),
    "3x3 s2": ConvProblem(128, 160, 32, 32, 320, (3, 3), (2, 2), (1, 1)),
    "1x1 s1": ConvProblem(128, 16, 32, 32, 160, (1, 1), (1, 1), (0, 0)),
    "1x1 s2": ConvProblem(128, 160, 32, 32, 320, (1, 1), (2, 2), (0, 0)),
}
TARGETS = ("direct", "workspace", "atomic")


@dataclass(frozen=True)
class KernelVariant:
    """One compiled form of a kernel.

    args: every non-constexpr parameter: pointer types as strings ("*fp16", "*fp32", ...) and
    ints as example values of a representative call. constexprs: the constexpr parameters.
    """

    name: str
    kernel: object
    args: Mapping[str, object]
    constexprs: Mapping[str, object]
    num_warps: int
    num_stages: int
    representative: bool = False
    maxnreg: int | None = None


def variant_of(launch: Launch, name: str, representative: bool = False) -> KernelVariant:
    """The variant a recorded launch compiles: tensors become pointer types, None a constexpr."""
    args, constexprs = {}, dict(launch.constexprs)
    for key, value in launch.args.items():
        if value is None:
            constexprs[key] = None
        elif isinstance(value, torch.Tensor):
            args[key] = f"*{POINTER_TYPES[value.dtype]}"
        else:
            args[key] = value
    return KernelVariant(name, launch.kernel, args, constexprs, launch.num_warps, launch.num_stages, representative,
                         launch.maxnreg)


def _describe(launch: Launch, label: str) -> str:
    """label plus what the launch adds: its tile, or the ordered sum's order and format."""
    c = launch.constexprs
    if "BLOCK_M" in c:
        return f"{label} {c['TARGET']} acc={c['ACCUMULATE']} {c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}"
    order = f"splitk {c['GRANULARITY']}" if c["ORDERED"] else "fixed"
    return f"ordered_sum {order} acc={c['ACCUMULATE']} out={POINTER_TYPES[launch.args['out_ptr'].dtype]}"


def _recorded(run, label: str, representative: bool) -> list[KernelVariant]:
    with counting(CallCounter()), recording() as launches:
        run()
    return [variant_of(launch, _describe(launch, label), representative) for launch in launches]


def _meta(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _format(dtype: torch.dtype) -> str:
    return POINTER_TYPES[dtype]


def gemm_call_variants(a: torch.Tensor, b: torch.Tensor, reduction: Reduction,
                       representative: bool = False) -> list[KernelVariant]:
    """The variants kernels.matmul's Triton GEMM launches for a @ b (meta tensors will do)."""
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    transposed = " a^T" if a.stride(0) == 1 and a.stride(1) != 1 else ""
    label = f"gemm {reduction.precision} in={_format(a.dtype)}/{_format(b.dtype)}{transposed}"
    return _recorded(lambda: gemm_triton.gemm(a, b, reduction, KEY, out_dtype), label, representative)


def conv_call_variants(role: str, problem: ConvProblem, dtype: torch.dtype, reduction: Reduction,
                       representative: bool = False) -> list[KernelVariant]:
    """The variants one role of a conv launches on contiguous `dtype` operands of `problem`."""
    shapes = problem.operand_shapes()
    operands = {name: _meta(*shapes[name], dtype=dtype) for name in conv_triton.READS[role]}
    kh, kw = problem.kernel
    label = (f"conv {role} {kh}x{kw} s{problem.stride[0]} {reduction.precision} in={_format(dtype)} "
             f"M{problem.gemm(role)[0]}")
    return _recorded(lambda: conv_triton.launch(role, problem, operands, reduction, dtype), label, representative)


def _reduction(kind: str, precision: str, accumulate: str, turn: int) -> Reduction:
    """A Reduction whose kernel writes to `kind`; workspaces alternate fixed and splitk (with
    the three granularities) by `turn`."""
    if kind == "direct":
        return Reduction("fixed", splits=1, precision=precision, accumulate=accumulate)
    if kind == "atomic":
        return Reduction("atomic", splits=SPLITS, precision=precision, accumulate=accumulate)
    if turn % 2 == 0:
        return Reduction("fixed", splits=SPLITS, precision=precision, accumulate=accumulate)
    granularity = ("element", "tile", "call")[turn // 2 % 3]
    return Reduction("splitk", splits=SPLITS, granularity=granularity, precision=precision, accumulate=accumulate)


def gemm_variants() -> list[KernelVariant]:
    """4096^3: input dtype x precision x target, accumulate rotating; the transposed-a layout of a
    weight gradient and two mixed-dtype pairs on natural inputs."""
    n = GEMM_SIZE
    variants = []
    for i, dtype in enumerate(INPUT_DTYPES):
        for p, precision in enumerate(KERNEL_PRECISIONS):
            for t, kind in enumerate(TARGETS):
                turn = i + p + t
                reduction = _reduction(kind, precision, KERNEL_ACCUMULATES[turn % 3], turn)
                representative = dtype == NATURAL_INPUT[precision] and kind != "atomic" and turn % 2 == 0
                variants += gemm_call_variants(_meta(n, n, dtype=dtype), _meta(n, n, dtype=dtype), reduction,
                                               representative)
    for precision in KERNEL_PRECISIONS:
        dtype = NATURAL_INPUT[precision]
        variants += gemm_call_variants(_meta(n, n, dtype=dtype).t(), _meta(n, n, dtype=dtype),
                                       _reduction("workspace", precision, "fp32", 1), precision == "fp16")
    for a_dtype, b_dtype, precision in ((torch.float16, torch.float32, "fp16"),
                                        (torch.bfloat16, torch.float16, "bf16")):
        variants += gemm_call_variants(_meta(n, n, dtype=a_dtype), _meta(n, n, dtype=b_dtype),
                                       _reduction("direct", precision, "fp32", 0))
    return variants


def conv_variants() -> list[KernelVariant]:
    """Every role x input dtype x precision stored directly (the geometry rotating with the input
    dtype), and every role x precision into a workspace and atomically (input, geometry and
    accumulate rotating)."""
    geometries = list(CONV_GEOMETRIES.values())
    variants = []
    for r, role in enumerate(conv_triton.READS):
        for p, precision in enumerate(KERNEL_PRECISIONS):
            for i, dtype in enumerate(INPUT_DTYPES):
                representative = dtype == NATURAL_INPUT[precision] and (r + p) % 2 == 0
                variants += conv_call_variants(role, geometries[i], dtype, _reduction("direct", precision, "fp32", 0),
                                               representative)
            for t, kind in enumerate(TARGETS[1:]):
                turn = r + p + t
                variants += conv_call_variants(role, geometries[turn % 4], INPUT_DTYPES[turn % 4],
                                               _reduction(kind, precision, KERNEL_ACCUMULATES[turn % 3], turn))
    return variants


def unique(variants: list[KernelVariant]) -> list[KernelVariant]:
    """The first of each set of variants that compile to the same code (the same specialization
    and options, kernels.aot.launch_specialization)."""
    from .aot import launch_specialization

    seen, kept = set(), []
    for variant in variants:
        key = (variant.kernel.fn.__qualname__, *(repr(part) for part in launch_specialization(variant)))
        if key not in seen:
            seen.add(key)
            kept.append(variant)
    return kept


def all_variants() -> list[KernelVariant]:
    return unique(gemm_variants() + conv_variants())
