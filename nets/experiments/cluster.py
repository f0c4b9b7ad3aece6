"""Running an experiment's grid through submitit: one scheduler job per training run.

submitit's SLURM executor takes the partition, the GPUs of each run and the time limit (and
how many of the grid's jobs may run at once); its local executor runs the same jobs as
processes of this machine (what the tests use). Each job runs the command a local grid would
run (runner.run_command: resume an interrupted run, replace one that left no checkpoint), its
output appended to logs/<run>.log, so giving the same command again after some jobs failed or
hit the time limit continues the grid where it stopped. A run with more than one GPU is
launched with torchrun, one rank per GPU (data parallel, see nets.training.distributed).
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .grids import Experiment, RunSpec
from .report import write_report
from .runner import outcome_line, run_command, start_grid

CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class Scheduler:
    """Where each run's job goes: the submitit cluster, partition, GPUs per run, time limit, parallelism."""

    cluster: str = "slurm"
    partition: str | None = None
    gpus_per_run: int = 0
    time_limit_minutes: int = 240
    parallel: int = 1

    def __post_init__(self):
        if self.cluster not in CLUSTERS:
            raise ValueError(f"cluster={self.cluster!r} is not allowed; choose one of {', '.join(CLUSTERS)}")
        for name, low in (("gpus_per_run", 0), ("time_limit_minutes", 1), ("parallel", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} is not allowed; it must be >= {low}")

    def program(self, program: list[str]) -> list[str]:
        """The training command ([python, tools/run.py]), under torchrun when a run has several GPUs."""
        if self.gpus_per_run < 2:
            return program
        return [program[0], "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.gpus_per_run}",
                *program[1:]]

    def parameters(self, name: str) -> dict:
        """submitit's executor parameters (slurm_* ones are ignored by the local executor)."""
        parameters = {"name": f"symbreak-{name}", "timeout_min": self.time_limit_minutes, "nodes": 1,
                      "tasks_per_node": 1, "gpus_per_node": self.gpus_per_run,
                      "slurm_array_parallelism": self.parallel}
        if self.partition:
            parameters["slurm_partition"] = self.partition
        return parameters


def job_command(spec: RunSpec, out: Path, program: list[str]) -> list[str]:
    """One job: the run's command, its output appended to logs/<run>.log like a local grid's."""
    command, log = shlex.join(run_command(spec, out, program)), shlex.quote(str(out / "logs" / f"{spec.name}.log"))
    return ["sh", "-c", f"echo {shlex.quote('$ ' + command)} >> {log}; exec {command} >> {log} 2>&1"]


def submit_experiment(experiment: Experiment, out: Path, program: list[str], scheduler: Scheduler,
                      echo: Callable[[str], None] = print) -> dict:
    """Submit the grid's unfinished runs as jobs, wait for them, then write its report; returns the results."""
    import submitit

    pending = start_grid(experiment, out, f"as {scheduler.cluster} jobs ({scheduler.parallel} at a time)", echo)
    if pending:
        executor = submitit.AutoExecutor(folder=out / "logs" / "submitit", cluster=scheduler.cluster)
        executor.update_parameters(**scheduler.parameters(experiment.name))
        program = scheduler.program(program)
        started = time.perf_counter()
        with executor.batch():
            jobs = [(spec, executor.submit(submitit.helpers.CommandFunction(job_command(spec, out, program),
                                                                            verbose=False)))
                    for spec in pending]
        for index, (spec, job) in enumerate(jobs, 1):
            try:
                job.result()
                code = 0
            except Exception:  # noqa: BLE001 - a failed or cancelled job: its run is reported unfinished
                code = 1
            echo(f"[{index}/{len(jobs)}] {outcome_line(spec, out, code, time.perf_counter() - started)}")
    return write_report([out], out)
