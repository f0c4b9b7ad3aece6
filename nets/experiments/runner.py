"""Running an experiment's grid: one training-run process per RunSpec, resumable, N at a time.

Every run is one process of the training command line (`program`, e.g. [python, tools/run.py])
writing a run directory inside the results directory `out`, which also receives experiment.json
(the grid), logs/ (each run's output) and, at the end, the report (results.json, results.md,
plots). Running the same grid again continues: finished runs are kept, interrupted ones resumed
from their checkpoint. With jobs > 1 each run gets OMP_NUM_THREADS = cores / jobs (unless set),
so parallel runs do not oversubscribe the machine.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ..files import write_json
from ..training.rundir import CHECKPOINT, CONFIG
from .aggregate import MANIFEST, SUMMARY, load_run
from .grids import Experiment, RunSpec
from .report import write_report

# A run past its timeout gets SIGINT (the training run then saves a checkpoint) and this long to exit.
INTERRUPT_GRACE_SECONDS = 60


def run_command(spec: RunSpec, out: Path, program: list[str]) -> list[str]:
    """The command of `spec`: resume an interrupted run, replace one that left no checkpoint."""
    run_dir = out / spec.name
    if (run_dir / CHECKPOINT).is_file():
        return program + ["--resume", "--out", str(run_dir)]
    extra = ["--overwrite"] if (run_dir / CONFIG).is_file() else []
    return program + spec.argv(run_dir) + extra


def check_manifest(experiment: Experiment, out: Path) -> None:
    """Refuse (ValueError) to mix two different grids in one results directory.

    A grid that keeps every run of the one already there (same name, same options) extends it:
    its finished runs are kept.
    """
    path = out / MANIFEST
    if not path.is_file():
        return
    wanted = {run["name"]: run for run in experiment.to_dict()["runs"]}
    if any(wanted.get(run["name"]) != run for run in json.loads(path.read_text())["runs"]):
        raise ValueError(f"{out} already holds a different grid ({path}); choose another --out or remove it")


def thread_environment(jobs: int) -> dict:
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def execute(spec: RunSpec, out: Path, program: list[str], env: dict, timeout: float | None) -> tuple[int, float]:
    """Run one spec to its end (or its timeout), its output in out/logs; (exit code, seconds)."""
    command = run_command(spec, out, program)
    started = time.perf_counter()
    with open(out / "logs" / f"{spec.name}.log", "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=INTERRUPT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
    return code, time.perf_counter() - started


def outcome_line(spec: RunSpec, out: Path, code: int, seconds: float) -> str:
    run_dir = out / spec.name
    if not (run_dir / SUMMARY).is_file():
        return f"{spec.name}: not finished (exit {code}, {seconds:.0f} s; see logs/{spec.name}.log)"
    metrics = load_run(run_dir).metrics()
    broke = "never" if metrics["break_step"] is None else f"step {metrics['break_step']}"
    onset = "never" if metrics["onset_step"] is None else f"step {metrics['onset_step']}"
    return (f"{spec.name}: test acc {metrics['final_acc']:.2f}%, onset {onset}, all layers broke {broke}, "
            f"{seconds:.0f} s")


def start_grid(experiment: Experiment, out: Path, how: str, echo: Callable[[str], None] = print) -> list[RunSpec]:
    """Check and record the grid in `out` (logs/, experiment.json); its runs still to do, run `how`."""
    check_manifest(experiment, out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST, experiment.to_dict())
    pending = [spec for spec in experiment.runs if not (out / spec.name / SUMMARY).is_file()]
    echo(f"{experiment.title}: {len(experiment.runs) - len(pending)} of {len(experiment.runs)} runs done, "
         f"{len(pending)} to run, {how}")
    return pending


def run_experiment(experiment: Experiment, out: Path, program: list[str], jobs: int = 1,
                   timeout: float | None = None, echo: Callable[[str], None] = print) -> dict:
    """Run the grid's unfinished runs into `out`, then write its report; returns the results."""
    if jobs < 1:
        raise ValueError(f"jobs={jobs} is not allowed; it must be >= 1")
    pending = start_grid(experiment, out, f"{jobs} at a time", echo)
    env = thread_environment(jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [(spec, pool.submit(execute, spec, out, program, env, timeout)) for spec in pending]
        for index, (spec, future) in enumerate(futures, 1):
            code, seconds = future.result()
            echo(f"[{index}/{len(pending)}] {outcome_line(spec, out, code, seconds)}")
    return write_report([out], out)
