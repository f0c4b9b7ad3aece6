"""Run one of the paper's experiments: a grid of tools/run.py runs, then its report.

    python tools/experiment.py table1 --dry-run                 # print the grid
    python tools/experiment.py dial --out results/dial          # run it (cpu scale) and report
    python tools/experiment.py table1 --scale paper --data-dir ~/cifar10 --out results/table1

Experiments: table1, table2, table3, figure1, dial (see probes.experiments). Every run is one
`python tools/run.py ...` process writing a run directory inside --out, which also receives
experiment.json (the grid), logs/ (each run's output) and, at the end, tools/report.py's
results.json, results.md and plots. Running the same command again continues: finished runs are
kept, interrupted ones resumed from their checkpoint. With --jobs N, runs go N at a time and
each gets OMP_NUM_THREADS = cores / N (unless set), so parallel runs do not oversubscribe.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

try:
    import probes  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.aggregate import MANIFEST, SUMMARY, load_run  # noqa: E402
from probes.experiments import EXPERIMENTS, SCALES, Experiment, RunSpec, build_experiment  # noqa: E402

TOOLS = Path(__file__).resolve().parent
# The offline MNIST test files beside the project (see ../shared/data/mnist-t10k/README.md): the
# default --data-dir of cpu-scale grids.
SHARED_MNIST = TOOLS.parents[1] / "shared" / "data" / "mnist-t10k"
CHECKPOINT = "checkpoint.pt"
# A run past --run-timeout gets SIGINT (run.py then saves a checkpoint) and this long to exit.
INTERRUPT_GRACE_SECONDS = 60


def parse_seeds(text: str | None):
    """"0,1,2" -> (0, 1, 2); None keeps the scale's default."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of ints, e.g. 0,1,2") from None


def run_command(spec: RunSpec, out: Path) -> list[str]:
    """The run.py command of `spec`: resume an interrupted run, replace one that left no checkpoint."""
    run_dir = out / spec.name
    command = [sys.executable, str(TOOLS / "run.py")]
    if (run_dir / CHECKPOINT).is_file():
        return command + ["--resume", "--out", str(run_dir)]
    extra = ["--overwrite"] if (run_dir / "config.json").is_file() else []
    return command + spec.argv(run_dir) + extra


def check_manifest(experiment: Experiment, out: Path) -> None:
    """Refuse to mix two different grids in one results directory.

    A grid that keeps every run of the one already there (same name, same options) extends it:
    its finished runs are kept.
    """
    path = out / MANIFEST
    if not path.is_file():
        return
    wanted = {run["name"]: run for run in experiment.to_dict()["runs"]}
    if any(wanted.get(run["name"]) != run for run in json.loads(path.read_text())["runs"]):
        raise click.ClickException(
            f"{out} already holds a different grid ({path}); choose another --out or remove it")


def thread_environment(jobs: int) -> dict:
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def execute(spec: RunSpec, out: Path, env: dict, timeout: float | None) -> tuple[int, float]:
    """Run one spec to its end (or its timeout), its output in out/logs; (exit code, seconds)."""
    command = run_command(spec, out)
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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("name", type=click.Choice(EXPERIMENTS))
@click.option("--scale", type=click.Choice(SCALES), default="cpu", show_default=True,
              help="cpu: small nets on offline data (2 CPU cores, minutes); paper: the paper's nets on CIFAR-10.")
@click.option("--seeds", help="Comma-separated seeds [cpu: 0,1,2; paper: 0,1,2,3].")
@click.option("--out", type=click.Path(file_okay=False), help="Results directory [results/<name>-<scale>].")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Dataset directory for the runs that read one (mnist; cifar10 at paper scale).")
@click.option("--jobs", type=int, default=1, show_default=True, help="Runs at a time.")
@click.option("--run-timeout", type=float, help="Seconds before a run is interrupted (it resumes next time).")
@click.option("--dry-run", is_flag=True, help="Print the grid (one run.py command per run) and stop.")
def main(name, scale, seeds, out, data_dir, jobs, run_timeout, dry_run) -> None:
    """Run the experiment NAME (see the module docstring)."""
    if jobs < 1:
        raise click.BadParameter(f"--jobs={jobs} is not allowed; it must be >= 1", param_hint="--jobs")
    if data_dir is None and scale == "cpu" and SHARED_MNIST.is_dir():
        data_dir = str(SHARED_MNIST)
    try:
        experiment = build_experiment(name, scale, parse_seeds(seeds), data_dir)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    out = Path(out or f"results/{name}-{scale}")
    if dry_run:
        click.echo(f"# {experiment.title} ({scale} scale): {len(experiment.groups())} configurations, "
                   f"{len(experiment.runs)} runs into {out}")
        for spec in experiment.runs:
            click.echo(f"{spec.name}: {shlex.join(['python', 'tools/run.py', *spec.argv(out / spec.name)])}")
        return
    check_manifest(experiment, out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(experiment.to_dict(), indent=2) + "\n")
    pending = [spec for spec in experiment.runs if not (out / spec.name / SUMMARY).is_file()]
    click.echo(f"{experiment.title}: {len(experiment.runs) - len(pending)} of {len(experiment.runs)} runs done, "
               f"{len(pending)} to run, {jobs} at a time")
    env = thread_environment(jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [(spec, pool.submit(execute, spec, out, env, run_timeout)) for spec in pending]
        for index, (spec, future) in enumerate(futures, 1):
            code, seconds = future.result()
            click.echo(f"[{index}/{len(pending)}] {outcome_line(spec, out, code, seconds)}")
    report = subprocess.run([sys.executable, str(TOOLS / "report.py"), str(out)], env=env)
    if report.returncode:
        raise click.ClickException(f"tools/report.py failed on {out} (exit {report.returncode})")


if __name__ == "__main__":
    main()
