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
oversubscribe. With --launcher submitit each run is one scheduler job (SLURM: --partition,
--gpus-per-run, --time-limit; --jobs jobs at a time), resumed the same way:

    python tools/experiment.py table1 --scale paper --launcher submitit --partition gpu --gpus-per-run 1
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tools/NAME.py`: import from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import click

from nets.experiments.cluster import CLUSTERS, Scheduler, submit_experiment
from nets.experiments.grids import EXPERIMENTS, SCALES, build_experiment
from nets.experiments.report import report_text
from nets.experiments.runner import run_experiment
from nets.training.config import SEED_LIMIT
from tools.options import IntList, OutputPath, Seconds

TOOLS = Path(__file__).resolve().parent
RUN_PROGRAM = [sys.executable, str(TOOLS / "run.py")]
# The offline MNIST test files beside the project (see ../shared/data/mnist-t10k/README.md): the
# default --data-dir of cpu-scale grids.
SHARED_MNIST = TOOLS.parents[1] / "shared" / "data" / "mnist-t10k"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("name", type=click.Choice(EXPERIMENTS))
@click.option("--scale", type=click.Choice(SCALES), default="cpu", show_default=True,
              help="cpu: small nets on offline data (2 CPU cores, minutes); paper: the paper's nets on CIFAR-10.")
@click.option("--seeds", type=IntList(0, SEED_LIMIT), help="Comma-separated seeds [cpu: 0,1,2; paper: 0,1,2,3].")
@click.option("--out", type=OutputPath(dir_okay=True), help="Results directory [results/<name>-<scale>].")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Dataset directory for the runs that read one (mnist; cifar10 at paper scale).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Runs at a time.")
@click.option("--run-timeout", type=Seconds(), help="Seconds before a run is interrupted (it resumes next time).")
@click.option("--dry-run", is_flag=True, help="Print the grid (one run.py command per run) and stop.")
@click.option("--launcher", type=click.Choice(["local", "submitit"]), default="local", show_default=True,
              help="local: processes of this machine; submitit: one scheduler job per run.")
@click.option("--cluster", type=click.Choice(CLUSTERS), default="slurm", show_default=True,
              help="submitit's executor: slurm, or local (jobs on this machine).")
@click.option("--partition", help="SLURM partition of the jobs.")
@click.option("--gpus-per-run", type=click.IntRange(min=0), default=0, show_default=True,
              help="GPUs of each job; above 1 a run trains data parallel under torchrun.")
@click.option("--time-limit", type=click.IntRange(min=1), default=240, show_default=True,
              help="Minutes per job (a run cut short resumes from its last checkpoint next time).")
def main(name, scale, seeds, out, data_dir, jobs, run_timeout, dry_run, launcher, cluster, partition, gpus_per_run,
         time_limit) -> None:
    """Run the experiment NAME: its grid of training runs into --out (resumable), then its report."""
    if data_dir is None and scale == "cpu" and SHARED_MNIST.is_dir():
        data_dir = str(SHARED_MNIST)
    out = Path(out or f"results/{name}-{scale}")
    try:
        experiment = build_experiment(name, scale, seeds, data_dir)
        if dry_run:
            click.echo(f"# {experiment.title} ({scale} scale): {len(experiment.groups())} configurations, "
                       f"{len(experiment.runs)} runs into {out}")
            for spec in experiment.runs:
                click.echo(f"{spec.name}: {shlex.join(['python', 'tools/run.py', *spec.argv(out / spec.name)])}")
            return
        if launcher == "local":
            results = run_experiment(experiment, out, RUN_PROGRAM, jobs, run_timeout, click.echo)
        elif run_timeout is not None:
            raise ValueError("--run-timeout applies to --launcher local; scheduler jobs take --time-limit")
        else:
            scheduler = Scheduler(cluster, partition, gpus_per_run, time_limit, parallel=jobs)
            results = submit_experiment(experiment, out, RUN_PROGRAM, scheduler, click.echo)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    click.echo(report_text(results, out))


if __name__ == "__main__":
    main()
