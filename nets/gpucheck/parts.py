"""The GPU check's parts, most valuable first, and how one part runs.

Each part writes rows to a PartSink as it measures; `tools/gpucheck.py` runs every part in its
own process under its own timeout and assembles the report. The estimates are expectations for
an H100/H200-class GPU with a warm Triton cache from the compile part, not measurements.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from probes.device import describe_device, device_info, device_rows

from ..suite import run_suite
from ..training.config import build_config
from ..training.loop import Training
from ..training.rundir import prepare_run_dir
from . import bench
from .report import PartSink
from .variants import plan_variants

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PartContext:
    device: torch.device
    plan: object  # nets.gpucheck.workloads.Plan
    out_dir: Path
    seconds: float  # the time this part may take
    archs: tuple | None = None  # compute capabilities to compile for (None: the GPU's)


def library_versions() -> dict:
    import numpy
    import triton

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": cudnn, "triton": triton.__version__, "numpy": numpy.__version__}


def device_part(sink, context: PartContext) -> None:
    """The device record (NVML: name, UUID, driver, clocks, power) and the library versions, one
    field a row; the first row names the machine."""
    record = device_info()
    sink.add({"field": "device", "value": describe_device(record)})
    for name, version in library_versions().items():
        sink.add({"field": f"version.{name}", "value": version})
    for row in device_rows(record):
        sink.add(row)


_OUTCOME = r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)"
_RESULT_LINE = re.compile(rf"^(?:\[gw\d+\]\s+\[\s*\d+%\]\s+{_OUTCOME}\s+(\S+::\S+)|(\S+::\S+)\s+{_OUTCOME})")
_SUMMARY_LINE = re.compile(r"^(FAILED|ERROR) (\S+::\S+)(?: - (.*))?$")


def parse_test_line(line: str):
    """(test id, outcome) of a pytest -v result line, else None."""
    match = _RESULT_LINE.match(line.strip())
    if match is None:
        return None
    return (match.group(2), match.group(1)) if match.group(1) else (match.group(3), match.group(4))


def tests_part(sink, context: PartContext) -> None:
    """The `gpu`-marked tests, pass/fail per test as they finish (parallel with pytest-xdist)."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-rfE", "--tb=line", "-p", "no:cacheprovider",
               "tests"]
    if importlib.util.find_spec("xdist") is not None:
        command[3:3] = ["-n", str(min(8, os.cpu_count() or 1))]
    if importlib.util.find_spec("pytest_timeout") is not None:
        command[3:3] = ["--timeout", str(max(30, int(context.seconds / 3)))]
    log = (context.out_dir / "parts" / "tests.log").open("w", encoding="utf-8")
    wide = {**os.environ, "COLUMNS": "1000"}  # pytest cuts the summary's messages to the terminal's width
    process = subprocess.Popen(command, cwd=ROOT, env=wide, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    for line in process.stdout:
        log.write(line)
        log.flush()
        result = parse_test_line(line)
        summary = _SUMMARY_LINE.match(line.strip())
        if result is not None:
            sink.add({"test": result[0], "outcome": result[1]})
        elif summary is not None and summary.group(3):
            sink.add({"test": summary.group(2), "outcome": f"{summary.group(1)} (detail)",
                      "message": summary.group(3)[:300]})
    process.wait()


def compile_part(sink, context: PartContext) -> None:
    """Every kernel variant the later parts launch, compiled in parallel for this GPU (filling
    Triton's cache), with registers, spills and shared memory as ptxas reports them."""
    from kernels.aot import compile_all

    archs = context.archs or (_compute_capability(),)
    variants = plan_variants(context.plan)
    workers = max(1, min(16, (os.cpu_count() or 2) - 1))
    for report in compile_all(variants, archs, workers):
        sink.add({"variant": report.name, "sm": report.arch, "registers": report.registers,
                  "spill_bytes": report.spill_stores, "shared_kib": round(report.shared_bytes / 1024, 1),
                  "mma": report.matrix_instructions, "cp_async_bytes": report.cp_async_bytes, "tma": report.tma,
                  "global_load_bits": report.global_load_bits, "seconds": report.seconds})


def _compute_capability() -> int:
    """The first GPU's sm number from NVML (CUDA stays untouched: the compile workers fork)."""
    record = device_info()
    capability = (record.get("gpus") or [{}])[0].get("compute_capability") or "9.0"
    major, minor = capability.split(".")
    return int(major) * 10 + int(minor)


# Cheapest first: native needs no kernel compiled, atomic is the paper's noisy mode, fixed its control.
SYMMETRY_RUNS = {
    "native": {"reduction": "native"},
    "atomic": {"reduction": "atomic"},
    "fixed": {"reduction": "fixed"},
    "native deterministic": {"reduction": "native", "native_deterministic": True},
}


def symmetry_part(sink, context: PartContext) -> None:
    """Short zero-init ConstNet runs on synthetic CIFAR-shaped data: when did symmetry break?

    A run is started only if the longest run so far still fits in the part's time; the others
    are listed as not run, so a short budget keeps the runs that finished."""
    plan = context.plan
    start, longest = time.perf_counter(), 0.0
    for label, options in SYMMETRY_RUNS.items():
        elapsed = time.perf_counter() - start
        if elapsed + longest > 0.9 * context.seconds:  # a tenth for the part's process to start and stop
            sink.add({"run": label, "steps": plan.symmetry_steps, "batch": plan.batch,
                      "symmetry_broke_step": f"not run: {context.seconds - elapsed:.0f} s left of the part, "
                                             f"the longest run took {longest:.0f} s"})
            continue
        sink.add({"run": label, "steps": plan.symmetry_steps, "batch": plan.batch,
                  **_symmetry_run(label, options, context)})
        longest = max(longest, time.perf_counter() - start - elapsed)


def _symmetry_run(label: str, options: dict, context: PartContext) -> dict:
    """One training run of the plan's ConstNet under `options`; its files are kept under runs/LABEL."""
    plan = context.plan
    overrides = {"depth": plan.depth, "widen": plan.widen, "dataset": "synthetic", "steps": plan.symmetry_steps,
                 "batch_size": plan.batch, "lr_milestones": "", "device": str(context.device), **options}
    config = build_config("paper", overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        run_dir = prepare_run_dir(Path(folder) / "run", resume=False, overwrite=False)
        summary = Training(config, echo=lambda text: None).run(run_dir).summary or {}
        keep = context.out_dir / "runs" / label.replace(" ", "-")
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "summary.json", "symmetry.jsonl", "metrics.jsonl"):
            if (run_dir.path / name).exists():
                shutil.copy(run_dir.path / name, keep / name)
    broke = summary.get("symmetry_broke_step")
    return {"symmetry_broke_step": "did not break" if broke is None else broke,
            "first_layer_broke_step": summary.get("first_layer_broke_step"),
            "seconds": round(time.perf_counter() - start, 1)}


def fingerprint_part(sink, context: PartContext) -> None:
    """The fixed, seeded fingerprint suite (nets.suite), for `probe.py compare` across GPUs."""
    result = run_suite(context.device)
    path = context.out_dir / "fingerprint.json"
    path.write_text(json.dumps(result, indent=1))
    sink.add({"file": path.name, "entries": len(result["entries"]), "kernel_backend": result["kernel_backend"]})


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    run: Callable
    estimate_s: int  # expected on the GPU plan (an expectation)
    cap_s: int  # the most this part may take of the budget
    minimum_s: int  # not started with less time left than this


def _bench(function):
    return lambda sink, context: function(sink, context.device, context.plan)


PARTS = (
    Part("device", "device record and library versions", device_part, 5, 30, 5),
    Part("tests", "gpu-marked tests", tests_part, 120, 150, 40),
    Part("compile", "kernel variants compiled for this GPU", compile_part, 60, 120, 30),
    Part("determinism", "distinct bit patterns among repeats", _bench(bench.determinism_part), 10, 45, 10),
    Part("gemm", "GEMM against cuBLAS", _bench(bench.gemm_part), 25, 60, 15),
    Part("conv", "ConstNet-16-10 conv layers against cuDNN", _bench(bench.conv_part), 60, 120, 20),
    Part("step", "one ConstNet-16-10 training step against native", _bench(bench.step_part), 15, 45, 10),
    Part("fingerprint", "fingerprint suite for cross-GPU compare", fingerprint_part, 45, 90, 10),
    # last: it runs what fits of its four runs in the time left (on an H200: native 27 s,
    # atomic 81 s at 128 steps of ConstNet-16-10, batch 128)
    Part("symmetry", "zero-init ConstNet runs: when symmetry broke", symmetry_part, 220, 240, 40),
)
PART_NAMES = tuple(part.name for part in PARTS)


def run_part(name: str, out_dir: Path, plan, seconds: float, archs=None) -> None:
    """Run one part in this process, writing its rows to DIR/parts/NAME.jsonl."""
    part = next(part for part in PARTS if part.name == name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    part.run(PartSink(out_dir, name), PartContext(device, plan, Path(out_dir), seconds, archs))
