"""Compile every Triton kernel variant for sm_80 / sm_90 without a GPU and read its resource use.

    python -m kernels.aot [--arch 80 90] [--fast] [--only SUBSTRING] [--json]

Registry: every module kernels/triton_*.py that defines `aot_variants() -> list[KernelVariant]`
is collected; a new kernel module takes part by defining that function, nothing else.

A variant names one kernel, example runtime arguments and its constexprs (a kernel with a dot
names its operand precision in a PRECISION constexpr: "fp32" | "tf32" | "fp16" | "bf16"). The example arguments
are specialized the way Triton's launcher specializes a real call (pointers 16-byte aligned,
ints equal to 1 become constants, ints divisible by 16 carry that divisibility, unless the
parameter is marked do_not_specialize), so the compiled code is the code a GPU would run for
such a call. `representative=True` marks the small subset that `--fast` (and the quick test)
compiles.

Each report gives the registers per thread and spill stores from `ptxas -v` on the kernel's PTX,
the shared memory Triton allocates, and the matrix instruction family found in the PTX:
"wgmma" (Hopper warpgroup MMA), "mma" (mma.sync tensor cores) or "none" (FMA / no dot).

Must run without TRITON_INTERPRET=1: triton.jit decides at decoration time whether a kernel is
compiled or interpreted.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Mapping

ARCHS = (80, 90)
WARP_SIZE = 32
SHARED_LIMITS = {80: 163 * 1024, 90: 227 * 1024}  # bytes of shared memory one block may use


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


@dataclass(frozen=True)
class CompileReport:
    """Resource use of one variant on one arch; precision is its PRECISION constexpr, if any."""

    name: str
    arch: int
    precision: str | None
    registers: int
    spill_stores: int
    shared_bytes: int
    matrix_instructions: str
    seconds: float
    representative: bool = False


def specialize(variant: KernelVariant) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for triton.compile, as the launcher would derive them."""
    kernel = variant.kernel
    params = {param.name: param for param in kernel.params}
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in variant.constexprs:
            signature[name] = "constexpr"
            constexprs[name] = variant.constexprs[name]
            continue
        if name not in variant.args:
            raise ValueError(f"variant {variant.name!r}: no example value for argument {name!r}")
        value = variant.args[name]
        if isinstance(value, str):
            signature[name] = value
            attrs[(index,)] = [["tt.divisibility", 16]]
            continue
        if params[name].do_not_specialize:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif value == 1:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers per thread, spill store bytes) reported by ptxas -v for this PTX."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as handle:
            handle.write(ptx)
        result = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", source,
             "-o", os.path.join(folder, "kernel.cubin")],
            capture_output=True, text=True, check=True,
        )
    registers = re.search(r"Used (\d+) registers", result.stderr)
    spills = re.search(r"(\d+) bytes spill stores", result.stderr)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas output:\n{result.stderr}")
    return int(registers.group(1)), int(spills.group(1))


def matrix_instructions(ptx: str) -> str:
    if re.search(r"\bwgmma\.mma_async", ptx):
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma"
    return "none"


def compile_variant(variant: KernelVariant, arch: int) -> CompileReport:
    """Compile one variant for sm_<arch> and read its resource use."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    signature, constexprs, attrs = specialize(variant)
    source = ASTSource(fn=variant.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, WARP_SIZE),
        options={"num_warps": variant.num_warps, "num_stages": variant.num_stages},
    )
    ptx = compiled.asm["ptx"]
    registers, spills = _ptxas_usage(ptx, arch)
    return CompileReport(
        variant.name, arch, variant.constexprs.get("PRECISION"), registers, spills, compiled.metadata.shared,
        matrix_instructions(ptx),
        round(time.perf_counter() - start, 2), variant.representative,
    )


def collect_variants(fast: bool = False, only: str | None = None) -> list[KernelVariant]:
    """Variants from every kernels.triton_* module that defines aot_variants()."""
    from triton.runtime.interpreter import InterpretedFunction

    import kernels

    variants = []
    for module_info in pkgutil.iter_modules(kernels.__path__):
        if not module_info.name.startswith("triton_"):
            continue
        module = importlib.import_module(f"kernels.{module_info.name}")
        if hasattr(module, "aot_variants"):
            variants.extend(module.aot_variants())
    if any(isinstance(variant.kernel, InterpretedFunction) for variant in variants):
        raise RuntimeError("kernels were decorated under TRITON_INTERPRET=1; run with TRITON_INTERPRET=0")
    if fast:
        variants = [variant for variant in variants if variant.representative]
    if only:
        variants = [variant for variant in variants if only in variant.name]
    return variants


_POOL_VARIANTS: list[KernelVariant] = []


def _compile_job(job: tuple[int, int]) -> CompileReport:
    index, arch = job
    return compile_variant(_POOL_VARIANTS[index], arch)


def compile_all(variants: list[KernelVariant], archs=ARCHS, workers: int | None = None) -> list[CompileReport]:
    """Compile each variant for each arch, in parallel worker processes (forked: kernels are inherited)."""
    jobs = [(index, arch) for arch in archs for index in range(len(variants))]
    _POOL_VARIANTS[:] = variants
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=context) as pool:
        return list(pool.map(_compile_job, jobs))


def format_table(reports: list[CompileReport]) -> str:
    width = max([len("variant")] + [len(report.name) for report in reports])
    lines = [f"{'variant':<{width}}  sm  regs  spills  smem KiB  mma    s"]
    for report in reports:
        lines.append(
            f"{report.name:<{width}}  {report.arch}  {report.registers:4d}  {report.spill_stores:6d}  "
            f"{report.shared_bytes / 1024:8.1f}  {report.matrix_instructions:<5}  {report.seconds:.1f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=ARCHS,
                        help="compute capabilities to compile for")
    parser.add_argument("--fast", action="store_true", help="only the representative variants")
    parser.add_argument("--only", default=None, help="only variants whose name contains this text")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON instead of a table")
    parser.add_argument("--workers", type=int, default=None, help="parallel compile processes (default: CPU count)")
    options = parser.parse_args(argv)
    variants = collect_variants(fast=options.fast, only=options.only)
    if not variants:
        parser.error("no kernel variant matches")
    reports = compile_all(variants, options.arch, options.workers)
    if options.json:
        print(json.dumps([asdict(report) for report in reports], indent=1))
    else:
        print(format_table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
