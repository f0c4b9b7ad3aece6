"""Run one of the paper's experiments: a grid of tools/run.py runs, then its report.

    python tools/experiment.py table1 --dry-run                 # print the grid
    python tools/experiment.py dial --out results/dial          # run it (cpu scale) and report
    python tools/experiment.py table1 --scale paper --data-dir ~/cifar10 --out results/table1

Experiments: table1, table2, table3, figure1, dial (see nets.experiments.grids). Every run is one
`python tools/run.py ...` process writing a run directory inside --out, which also receives
experiment.json (the grid), logs/ (each run's output) and, at the end, the report of
tools/report.py: results.json, results.md and plots. Running the same command again continues:
finished runs are kept, interrupted ones resumed from their checkpoint. With --jobs N, runs go N
at a time and each gets OMP_NUM_THREADS = cores / N (unless set), so parallel runs do not
oversubscribe.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tools/NAME.py`: import from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import click

from nets.experiments.grids import EXPERIMENTS, SCALES, build_experiment
from nets.experiments.report import report_text
from nets.experiments.runner import run_experiment

TOOLS = Path(__file__).resolve().parent
RUN_PROGRAM = [sys.executable, str(TOOLS / "run.py")]
# The offline MNIST test files beside the project (see ../shared/data/mnist-t10k/README.md): the
# default --data-dir of cpu-scale grids.
SHARED_MNIST = TOOLS.parents[1] / "shared" / "data" / "mnist-t10k"


def parse_seeds(text: str | None):
    """"0,1,2" -> (0, 1, 2); None keeps the scale's default."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of ints, e.g. 0,1,2") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("name", type=click.Choice(EXPERIMENTS))
@click.option("--scale", type=click.Choice(SCALES), default="cpu", show_default=True,
              help="cpu: small nets on offline data (2 CPU cores, minutes); paper: the paper's nets on CIFAR-10.")
@click.option("--seeds", help="Comma-separated seeds [cpu: 0,1,2; paper: 0,1,2,3].")
@click.option("--out", type=click.Path(file_okay=False), help="Results directory [results/<name>-<scale>].")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Dataset directory for the runs that read one (mnist; cifar10 at paper scale).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Runs at a time.")
@click.option("--run-timeout", type=float, help="Seconds before a run is interrupted (it resumes next time).")
@click.option("--dry-run", is_flag=True, help="Print the grid (one run.py command per run) and stop.")
def main(name, scale, seeds, out, data_dir, jobs, run_timeout, dry_run) -> None:
    """Run the experiment NAME: its grid of training runs into --out (resumable), then its report."""
    if data_dir is None and scale == "cpu" and SHARED_MNIST.is_dir():
        data_dir = str(SHARED_MNIST)
    out = Path(out or f"results/{name}-{scale}")
    try:
        experiment = build_experiment(name, scale, parse_seeds(seeds), data_dir)
        if dry_run:
            click.echo(f"# {experiment.title} ({scale} scale): {len(experiment.groups())} configurations, "
                       f"{len(experiment.runs)} runs into {out}")
            for spec in experiment.runs:
                click.echo(f"{spec.name}: {shlex.join(['python', 'tools/run.py', *spec.argv(out / spec.name)])}")
            return
        results = run_experiment(experiment, out, RUN_PROGRAM, jobs, run_timeout, click.echo)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    click.echo(report_text(results, out))


if __name__ == "__main__":
    main()
