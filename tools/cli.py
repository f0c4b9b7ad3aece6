"""`symbreak`: every command line of the project as one installed program.

    symbreak run ...          tools/run.py        (train)
    symbreak probe ...        tools/probe.py      (measure)
    symbreak bench ...        tools/bench.py      (time)
    symbreak experiment ...   tools/experiment.py (the paper's grids)
    symbreak report ...       tools/report.py     (aggregate run directories)
"""
from __future__ import annotations

import click

from tools import bench, experiment, probe, report, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Reduction-order kernels: train, measure, time, and run the paper's experiments."""


main.add_command(run.main, "run")
main.add_command(probe.cli, "probe")
main.add_command(bench.cli, "bench")
main.add_command(experiment.main, "experiment")
main.add_command(report.main, "report")
