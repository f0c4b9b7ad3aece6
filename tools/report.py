"""Aggregate run directories into results.json, a Markdown table and PNG plots.

    python tools/report.py results/table1                 # a results directory (tools/experiment.py)
    python tools/report.py runs/a runs/b --out report/    # any run directories

Each PATH is a run directory or a results directory of runs. Rows follow the experiment's
grid when the results directory has an experiment.json; other runs are grouped by their options
(seeds aside). Unfinished runs (no summary.json) are counted, not averaged. Writes into --out
(default: the single PATH given): results.json, results.md and one PNG per plotted metric.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tools/NAME.py`: import from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import click

from nets.experiments.report import report_text, write_report
from tools.options import OutputPath


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=OutputPath(dir_okay=True),
              help="Where to write results.json, results.md and the plots [the PATH, when only one is given].")
def main(paths, out) -> None:
    """Aggregate run directories (or results directories of runs) into results.json, results.md and plots."""
    if out is None:
        if len(paths) != 1:
            raise click.UsageError("give --out when aggregating more than one PATH")
        out = paths[0]
    try:
        results = write_report(paths, Path(out))
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    click.echo(report_text(results, Path(out)))


if __name__ == "__main__":
    main()
