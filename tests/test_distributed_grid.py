"""Experiment grids through submitit (its local executor): jobs run, a partly failed grid resumes."""
import os
import sys

import pytest

from nets.experiments.cluster import Scheduler, job_command, submit_experiment
from nets.experiments.grids import Experiment, RunSpec
from test_run_support import RUN_SCRIPT, TINY

OPTIONS = tuple({**TINY, "reduction": "fixed", "steps": 1}.items())
GRID = Experiment("tiny", "cpu", "A tiny grid", "seed", False,
                  tuple(RunSpec("fixed", "fixed", 0, seed, (*OPTIONS, ("seed", seed))) for seed in (0, 1)))
PROGRAM = [sys.executable, str(RUN_SCRIPT)]


@pytest.mark.slow
def test_submitit_grid_resumes_where_it_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    first, second = (tmp_path / spec.name for spec in GRID.runs)
    second.write_text("a file where the run directory should be")  # this job fails
    lines = []
    submit_experiment(GRID, tmp_path, PROGRAM, Scheduler(cluster="local", time_limit_minutes=10), lines.append)
    assert "2 to run" in lines[0] and "not finished (exit 1" in lines[2], lines
    assert (first / "summary.json").is_file()
    assert "is a file" in (tmp_path / "logs" / f"{GRID.runs[1].name}.log").read_text()
    finished = os.stat(first / "summary.json").st_mtime_ns
    second.unlink()
    lines.clear()
    results = submit_experiment(GRID, tmp_path, PROGRAM, Scheduler(cluster="local"), lines.append)
    assert "1 of 2 runs done, 1 to run" in lines[0] and "test acc" in lines[1], lines
    assert os.stat(first / "summary.json").st_mtime_ns == finished, "a finished run must not run again"
    assert (second / "summary.json").is_file() and (tmp_path / "results.json").is_file()
    assert results["groups"][0]["runs"] == [spec.name for spec in GRID.runs]


def test_scheduler_options_become_executor_parameters():
    scheduler = Scheduler(partition="gpu", gpus_per_run=4, time_limit_minutes=90, parallel=8)
    assert scheduler.parameters("table1") == {
        "name": "symbreak-table1", "timeout_min": 90, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 4,
        "slurm_array_parallelism": 8, "slurm_partition": "gpu"}
    assert scheduler.program(["python", "tools/run.py"]) == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "tools/run.py"]
    assert Scheduler(gpus_per_run=1).program(["python", "tools/run.py"]) == ["python", "tools/run.py"]


def test_a_job_appends_the_runs_output_to_its_log(tmp_path):
    command = job_command(GRID.runs[0], tmp_path, ["python", "tools/run.py"])
    assert command[:2] == ["sh", "-c"]
    assert command[2].endswith(f">> {tmp_path / 'logs' / GRID.runs[0].name}.log 2>&1")


@pytest.mark.parametrize("kwargs, message", [
    ({"cluster": "pbs"}, "cluster='pbs' is not allowed; choose one of slurm, local"),
    ({"gpus_per_run": -1}, "gpus_per_run=-1 is not allowed"),
    ({"time_limit_minutes": 0}, "time_limit_minutes=0 is not allowed"),
])
def test_bad_scheduler_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scheduler(**kwargs)
