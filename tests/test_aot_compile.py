"""Every Triton kernel variant compiles for sm_80 and sm_90 on this CPU-only machine.

kernels.aot runs in a subprocess with TRITON_INTERPRET=0: conftest sets TRITON_INTERPRET=1 in
this process when there is no GPU, and triton.jit picks the interpreter at decoration time.
The quick test compiles the representative variants; the slow one compiles all of them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.aot import ARCHS, SHARED_LIMITS

ROOT = Path(__file__).resolve().parents[1]
MAX_REGISTERS = 255
TENSOR_CORE_PRECISIONS = ("tf32", "fp16", "bf16")


def compile_reports(*options: str) -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run(
        [sys.executable, "-m", "kernels.aot", "--json", *options],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, f"kernels.aot failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


def expected_instructions(precision: str | None, arch: int) -> str:
    if precision not in TENSOR_CORE_PRECISIONS:
        return "none"  # fp32 uses exact FMA products; the ordered sum has no dot
    return "wgmma" if arch == 90 else "mma"


def check_reports(reports: list[dict]) -> None:
    by_arch = {arch: {report["name"]: report for report in reports if report["arch"] == arch} for arch in ARCHS}
    assert by_arch[80] and by_arch[80].keys() == by_arch[90].keys(), "every variant must compile for both archs"
    assert any(name.startswith("gemm") for name in by_arch[90]), "no GEMM variant was compiled"
    problems = []
    for report in reports:
        where = f"{report['name']} on sm_{report['arch']}"
        want = expected_instructions(report["precision"], report["arch"])
        if report["matrix_instructions"] != want:
            problems.append(f"{where}: uses {report['matrix_instructions']!r}, expected {want!r}")
        if report["spill_stores"]:
            problems.append(f"{where}: spills {report['spill_stores']} bytes of registers")
        if report["shared_bytes"] > SHARED_LIMITS[report["arch"]]:
            problems.append(f"{where}: needs {report['shared_bytes']} bytes of shared memory")
        if not 0 < report["registers"] <= MAX_REGISTERS:
            problems.append(f"{where}: {report['registers']} registers")
    assert not problems, "\n".join(problems)


def test_representative_variants_compile_for_sm80_and_sm90():
    reports = compile_reports("--fast")
    check_reports(reports)
    hopper_half = [
        r for r in reports if r["arch"] == 90 and r["name"].startswith("gemm") and r["precision"] in ("fp16", "bf16")
    ]
    assert hopper_half, "the fast set must include the fp16/bf16 GEMM on sm_90"


@pytest.mark.slow
def test_every_variant_compiles_for_sm80_and_sm90():
    check_reports(compile_reports())


def test_registry_covers_every_input_dtype_format_and_target():
    """Every (input dtype, operand format, target kind) of the GEMM and of each conv role, each
    accumulate format on every target kind, and both orders of the second stage (before variants
    that compile to the same code are merged: a float64 input is read as float32)."""
    from kernels.aot_variants import INPUT_DTYPES, POINTER_TYPES, TARGETS, conv_variants, gemm_variants
    from kernels.reduction import KERNEL_ACCUMULATES, KERNEL_PRECISIONS

    variants = gemm_variants() + conv_variants()
    seen = {(v.name.split(" in=")[0].rsplit(" ", 1)[0], v.name.split(" in=")[1].split("/")[0].split(" ")[0],
             v.constexprs["PRECISION"], v.constexprs["TARGET"], v.constexprs["ACCUMULATE"])
            for v in variants if "PRECISION" in v.constexprs}
    for op in ("gemm", "conv forward", "conv input_grad", "conv weight_grad"):
        for dtype in INPUT_DTYPES:
            for precision in KERNEL_PRECISIONS:
                targets = {t for o, i, p, t, _ in seen if (o.startswith(op), i, p) == (True, POINTER_TYPES[dtype], precision)}
                assert targets >= ({"direct"} if op != "gemm" else set(TARGETS)), (op, dtype, precision, targets)
            for target in TARGETS[1:]:
                assert any(o.startswith(op) and t == target for o, _, _, t, _ in seen), (op, target)
    assert {(t, a) for _, _, _, t, a in seen} == {(t, a) for t in TARGETS for a in KERNEL_ACCUMULATES}
    sums = {(v.constexprs["ORDERED"], v.constexprs["ACCUMULATE"]) for v in variants if "ORDERED" in v.constexprs}
    assert sums == {(ordered, a) for ordered in (False, True) for a in KERNEL_ACCUMULATES}


FRESH_AND_CACHED = """
import json, sys
from kernels.aot import collect_variants, compile_variant
variant = collect_variants(only=sys.argv[1])[0]
reports = [(compile_variant(variant, arch), compile_variant(variant, arch)) for arch in (80, 90)]
print(json.dumps([[(r.registers, r.spill_stores) for r in pair] for pair in reports]))
"""


@pytest.mark.parametrize("only", ["gemm fp16 in=fp16/fp16 direct", "ordered_sum"])
def test_a_fresh_compile_and_a_cached_one_report_the_same_usage(tmp_path, only):
    """A fresh compile is read from the ptxas log Triton writes; a cached one from ptxas run on
    its PTX again (the second compile_variant call above finds the first in the cache)."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", FRESH_AND_CACHED, only], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for fresh, cached in json.loads(result.stdout.strip().splitlines()[-1]):
        assert fresh == cached and 0 < fresh[0] <= MAX_REGISTERS and fresh[1] == 0, (fresh, cached)
