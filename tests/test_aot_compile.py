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
