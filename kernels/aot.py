"""Compile every Triton kernel variant for sm_80 / sm_90 without a GPU and read its resource use.

    python -m kernels.aot [--arch 80 --arch 90] [--fast] [--only SUBSTRING] [--json]

The variants come from kernels.aot_variants. Their example arguments go through Triton's own
launch binder (pointers 16-byte aligned, ints equal to 1 become constants, ints divisible by 16
carry that divisibility, unless the parameter is marked do_not_specialize), so the compiled code
is the code a GPU would run for such a call, stored under the cache key that call looks up.

Each report gives the registers per thread and spill stores from `ptxas -v` (the run Triton makes
for a fresh compile; a run of our own on the PTX of a cached one),
the shared memory Triton allocates, the matrix instruction family found in the PTX ("wgmma":
Hopper warpgroup MMA, "mma": mma.sync tensor cores, "none": FMA / no dot), and how operands
reach the SM: the widest asynchronous global-to-shared copy (`cp.async`, bytes; 0 when loads go
through registers), whether the Hopper tensor memory accelerator is used (TMA,
`cp.async.bulk.tensor`), and the widest global load through registers (bits: 16 for scalar fp16
gathers, 128 for `ld.global.v4.b32`).

Must run without TRITON_INTERPRET=1: triton.jit decides at decoration time whether a kernel is
compiled or interpreted.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass

import click

from .aot_variants import KernelVariant

ARCHS = (80, 90)
WARP_SIZE = 32
SHARED_LIMITS = {80: 163 * 1024, 90: 227 * 1024}  # bytes of shared memory one block may use


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
    cp_async_bytes: int
    tma: bool
    global_load_bits: int
    seconds: float
    representative: bool = False


def _example_arguments(variant: KernelVariant) -> dict:
    """The variant's call arguments: a meta tensor (address 0, so 16-byte aligned) per pointer."""
    import torch

    from .aot_variants import POINTER_TYPES

    dtypes = {name: dtype for dtype, name in POINTER_TYPES.items()}
    arguments = {name: torch.empty(0, dtype=dtypes[value[1:]], device="meta") if isinstance(value, str) else value
                 for name, value in variant.args.items()}
    return {**arguments, **variant.constexprs}


def launch_specialization(variant: KernelVariant, arch: int = 90) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attrs, options) for triton.compile, derived by Triton's own launch
    binder from the variant's arguments, exactly as a launch of such a call derives them; so a
    variant compiled here lands in the cache entry that launch looks up (Triton 3.6 and 3.8)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = variant.kernel
    backend = make_backend(GPUTarget("cuda", arch, WARP_SIZE))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**_example_arguments(variant), "num_warps": variant.num_warps, "num_stages": variant.num_stages,
              **({"maxnreg": variant.maxnreg} if variant.maxnreg else {}), "debug": kernel.debug or knobs.runtime.debug,
              "instrumentation_mode": knobs.compilation.instrumentation_mode}
    bound, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options.__dict__


def specialize(variant: KernelVariant, arch: int = 90) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of launch_specialization."""
    return launch_specialization(variant, arch)[:3]


def _usage_in(log: str) -> tuple[int, int] | None:
    """(registers per thread, spill store bytes) from a `ptxas -v` log, or None if it has none."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return None if registers is None or spills is None else (int(registers.group(1)), int(spills.group(1)))


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
    usage = _usage_in(result.stderr)
    if usage is None:
        raise RuntimeError(f"unexpected ptxas output:\n{result.stderr}")
    return usage


def _compile_with_ptxas_log(source, target, options):
    """triton.compile, and the log of the ptxas run it made (empty when the kernel came from
    Triton's cache): Triton runs `ptxas -v` itself, so a fresh compile is read without a second run."""
    import triton
    from triton import knobs

    log, dumping = io.StringIO(), knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True
    try:
        with redirect_stdout(log):
            compiled = triton.compile(source, target=target, options=options)
    finally:
        knobs.nvidia.dump_ptxas_log = dumping
    return compiled, log.getvalue()


def matrix_instructions(ptx: str) -> str:
    if re.search(r"\bwgmma\.mma_async", ptx):
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma"
    return "none"


def memory_instructions(ptx: str) -> tuple[int, bool, int]:
    """(widest cp.async in bytes, uses TMA, widest global load through registers in bits)."""
    copies = [int(size, 0) for size in
              re.findall(r"\bcp\.async\.c[ag]\.shared\.global[^;]*?\],\s*(0x[0-9a-f]+|\d+)\s*[,;]", ptx)]
    loads = [int(vector or 1) * int(bits)
             for vector, bits in re.findall(r"\bld\.global(?:\.[a-z0-9_:]+)*?(?:\.v(\d))?\.[bufs](\d+)\b", ptx)]
    return max(copies, default=0), bool(re.search(r"\bcp\.async\.bulk\.tensor", ptx)), max(loads, default=0)


def compile_variant(variant: KernelVariant, arch: int) -> CompileReport:
    """Compile one variant for sm_<arch> and read its resource use."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    signature, constexprs, attrs, options = launch_specialization(variant, arch)
    source = ASTSource(fn=variant.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled, log = _compile_with_ptxas_log(source, GPUTarget("cuda", arch, WARP_SIZE), options)
    ptx = compiled.asm["ptx"]
    registers, spills = _usage_in(log) or _ptxas_usage(ptx, arch)
    return CompileReport(
        variant.name, arch, variant.constexprs.get("PRECISION"), registers, spills, compiled.metadata.shared,
        matrix_instructions(ptx), *memory_instructions(ptx), round(time.perf_counter() - start, 2),
        variant.representative,
    )


def collect_variants(fast: bool = False, only: str | None = None) -> list[KernelVariant]:
    """The variants of kernels.aot_variants, optionally only the representative or matching ones."""
    from triton.runtime.interpreter import InterpretedFunction

    from .aot_variants import all_variants

    variants = all_variants()
    if any(isinstance(variant.kernel, InterpretedFunction) for variant in variants):
        raise click.ClickException("kernels were decorated under TRITON_INTERPRET=1; run with TRITON_INTERPRET=0")
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
    lines = [f"{'variant':<{width}}  sm  regs  spills  smem KiB  mma    cp.async  tma  ld bits     s"]
    for report in reports:
        lines.append(
            f"{report.name:<{width}}  {report.arch}  {report.registers:4d}  {report.spill_stores:6d}  "
            f"{report.shared_bytes / 1024:8.1f}  {report.matrix_instructions:<5}  {report.cp_async_bytes:7d}B  "
            f"{'yes' if report.tma else 'no':<3}  {report.global_load_bits:7d}  {report.seconds:5.1f}"
        )
    return "\n".join(lines)


@click.command(help=__doc__.split("\n")[0])
@click.option("--arch", type=click.Choice([str(arch) for arch in ARCHS]), multiple=True,
              help="compute capability to compile for (repeatable; default: all)")
@click.option("--fast", is_flag=True, help="only the representative variants")
@click.option("--only", default=None, help="only variants whose name contains this text")
@click.option("--json", "as_json", is_flag=True, help="print the reports as JSON instead of a table")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="parallel compile processes (default: CPU count)")
def main(arch, fast, only, as_json, workers) -> None:
    variants = collect_variants(fast=fast, only=only)
    if not variants:
        raise click.UsageError("no kernel variant matches")
    reports = compile_all(variants, tuple(int(a) for a in arch) or ARCHS, workers)
    if as_json:
        click.echo(json.dumps([asdict(report) for report in reports], indent=1))
    else:
        click.echo(format_table(reports))


if __name__ == "__main__":
    main(prog_name="python -m kernels.aot")
