"""tools/gpucheck.py without a GPU: the dry run, every part at CPU size, the report, and every
kernel variant the check launches compiled for sm_80 and sm_90.

The compile test runs on the installed triton and, when the environment variable TRITON36_DIR
names a `pip install --target` directory holding triton 3.6 (the GPU machine's version; see
.ci/triton36.sh), on that triton too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.aot import SHARED_LIMITS
from nets.gpucheck.parts import PART_NAMES, SYMMETRY_RUNS, PartContext, parse_test_line, symmetry_part
from nets.gpucheck.report import PartSink, findings, markdown, read_rows
from nets.gpucheck.workloads import TINY_PLAN

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gpucheck.py"
TRITON36 = os.environ.get("TRITON36_DIR")
CPU_PARTS = ("device", "determinism", "gemm", "conv", "step", "symmetry", "fingerprint")


def gpucheck(*args, pythonpath: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="0")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (pythonpath, env.get("PYTHONPATH"))))
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_lists_parts_variants_and_time():
    result = gpucheck("--dry-run", "--budget", "450")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for name in PART_NAMES:
        assert f"\n{name} " in "\n" + out, f"part {name} not listed"
    assert "gemm fp16 in=fp16/fp16 direct" in out and "conv weight_grad" in out and "ordered_sum" in out
    assert "estimated total" in out and "budget 450 s" in out


@pytest.mark.slow
def test_tiny_plan_runs_every_part_on_cpu(tmp_path):
    result = gpucheck("--plan", "tiny", "--budget", "800", "--out", str(tmp_path), "--parts", ",".join(CPU_PARTS))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    parts = {part["name"]: part for part in report["parts"]}
    for name in CPU_PARTS:
        assert parts[name]["status"] == "ok", f"{name}: {parts[name]['status']}\n{parts[name]['log_tail']}"
        assert parts[name]["rows"], f"{name} wrote no rows"
    assert parts["tests"]["status"] == "not run"
    for part in ("gemm", "conv"):
        for row in parts[part]["rows"]:
            assert isinstance(row["ours_max_rel_err"], float) and row["ours_max_rel_err"] < 0.05, row
    fixed = [row for row in parts["determinism"]["rows"] if row["reduction"] == "fixed"]
    assert fixed and fixed[0]["distinct_bit_patterns"] == 1
    assert {row["run"] for row in parts["symmetry"]["rows"]} == {"atomic", "native", "fixed", "native deterministic"}
    assert (tmp_path / "fingerprint.json").exists()
    text = (tmp_path / "report.md").read_text()
    assert "## conv:" in text and "## findings\n\nnone: every part ok, every check held" in text


def test_report_keeps_rows_of_a_killed_part(tmp_path):
    sink = PartSink(tmp_path, "gemm")
    sink.add({"case": "a", "ours_max_rel_err": float("inf")})
    with sink.path.open("a") as handle:
        handle.write('{"case": "cut by a ki')
    rows = read_rows(tmp_path, "gemm")
    assert rows == [{"case": "a", "ours_max_rel_err": "inf"}]
    text = markdown({"device": "x", "run": {"budget_s": 1},
                     "parts": [{"name": "gemm", "title": "t", "status": "timed out", "seconds": 1, "timeout_s": 1,
                                "rows": rows, "log_tail": "killed"}]})
    assert "timed out" in text and "| a | inf |" in text


def test_findings_list_what_needs_a_look():
    rows = {"tests": [{"test": "t.py::a", "outcome": "PASSED"}, {"test": "t.py::b", "outcome": "FAILED"},
                      {"test": "t.py::b", "outcome": "FAILED (detail)", "message": "ValueError: splits=8"}],
            "determinism": [{"reduction": "fixed", "distinct_bit_patterns": 1, "ok": True},
                            {"reduction": "splitk", "distinct_bit_patterns": 20, "ok": False}]}
    parts = [{"name": name, "title": "t", "status": status, "seconds": 1, "timeout_s": 1, "rows": rows.get(name, [])}
             for name, status in (("tests", "ok"), ("determinism", "ok"), ("gemm", "not run"), ("symmetry", "timed out"))]
    assert findings({"run": {}, "parts": parts}) == [
        "tests: t.py::b FAILED: ValueError: splits=8",
        "determinism: reduction splitk, distinct_bit_patterns 20",
        "symmetry: timed out",
    ]


def test_the_symmetry_part_leaves_out_runs_that_would_not_fit(tmp_path):
    symmetry_part(PartSink(tmp_path, "symmetry"), PartContext(torch.device("cpu"), TINY_PLAN, tmp_path, 0.5))
    rows = read_rows(tmp_path, "symmetry")
    assert [row["run"] for row in rows] == list(SYMMETRY_RUNS)
    assert isinstance(rows[0]["seconds"], float) and (tmp_path / "runs" / "native" / "summary.json").exists()
    assert all(row["symmetry_broke_step"].startswith("not run: ") for row in rows[1:])


def test_pytest_result_lines_are_parsed():
    assert parse_test_line("[gw3] [ 12%] PASSED tests/test_a.py::test_b[x-1] ") == ("tests/test_a.py::test_b[x-1]", "PASSED")
    assert parse_test_line("tests/test_a.py::test_b FAILED                  [ 50%]") == ("tests/test_a.py::test_b", "FAILED")
    assert parse_test_line("collected 3 items") is None


def test_bad_output_directory_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = gpucheck("--budget", "10", "--out", str(blocker / "out"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--out" in result.stderr


# what the check launches runs on the GPU machine's H200 (sm_90): compiled for it under the installed
# triton and triton 3.6, the GPU machine's (tests/test_aot_compile.py covers sm_80 for every combination)
TRITONS = [pytest.param(None, "90", id="installed-triton"),
           pytest.param(TRITON36, "90", id="triton-3.6",
                        marks=pytest.mark.skipif(not TRITON36, reason="set TRITON36_DIR to a triton 3.6 directory"))]


@pytest.mark.slow
@pytest.mark.parametrize("pythonpath, archs", TRITONS)
def test_every_variant_the_check_launches_compiles_without_spills(tmp_path, pythonpath, archs):
    result = gpucheck("--part", "compile", "--arch", archs, "--budget", "1", "--out", str(tmp_path),
                      pythonpath=pythonpath, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(tmp_path, "compile")
    assert rows and {str(row["sm"]) for row in rows} == set(archs.split(","))
    problems = [f"{row['variant']} sm_{row['sm']}: {row['spill_bytes']} B spilled, {row['shared_kib']} KiB shared"
                for row in rows
                if row["spill_bytes"] or row["shared_kib"] * 1024 > SHARED_LIMITS[row["sm"]]]
    assert not problems, "\n".join(problems)
