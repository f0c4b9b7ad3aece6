"""A results directory's report: results.json, a Markdown table (results.md) and one PNG per plotted metric.

Rows follow the experiment's grid when the results directory has an experiment.json; other runs
are grouped by their options (seeds aside). Unfinished runs (no summary.json) are counted, not
averaged. Matplotlib's Agg backend is used, so plotting needs no display.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..files import write_json  # noqa: E402
from .aggregate import METRICS, RESULTS, TABLE, collect, group_runs, is_number, markdown_table, summarize  # noqa: E402

# Plotted metrics: final accuracy, the two times to symmetry break, the end-of-run dissimilarity.
PLOTTED = ("final_acc", "onset_step", "break_step", "mean_dissim")
HEADERS = {metric.key: metric.header for metric in METRICS}


def _axis_label(key: str) -> str:
    return HEADERS[key].replace(" (end)", " at the end")


def _numeric_panel(axis, rows: list[dict], key: str, x_label: str, log_x: bool) -> None:
    """One line per series against a numeric x, mean ± std as error bars."""
    for series in dict.fromkeys(row["series"] for row in rows):
        points = sorted((row["x"], row["metrics"][key]) for row in rows
                        if row["series"] == series and row["metrics"][key]["mean"] is not None)
        if points:
            axis.errorbar([x for x, _ in points], [s["mean"] for _, s in points], yerr=[s["std"] for _, s in points],
                          marker="o", capsize=3, label=series)
    if log_x:
        axis.set_xscale("log", base=2)
    axis.set(xlabel=x_label, ylabel=_axis_label(key))
    axis.legend(fontsize=8)


def _categorical_panel(axis, rows: list[dict], key: str, title: str) -> None:
    """Mean ± std per configuration in grid order; configurations without a value say why."""
    labels = [str(row["x"]) for row in rows]
    positions = range(len(rows))
    top = max((row["metrics"][key]["mean"] + row["metrics"][key]["std"] for row in rows
               if row["metrics"][key]["mean"] is not None), default=1.0)
    for position, row in zip(positions, rows):
        stats = row["metrics"][key]
        if stats["mean"] is not None:
            axis.errorbar([position], [stats["mean"]], yerr=[stats["std"]], marker="o", capsize=3, color="tab:blue")
            for value in stats["values"]:
                axis.plot([position], [value], ".", color="tab:grey", markersize=4)
        else:
            reason = "never broke" if key in ("onset_step", "break_step") and row["finished"] else "no finished run"
            axis.annotate(reason, (position, top), ha="center", va="top", fontsize=7, color="tab:red", rotation=90)
    axis.set_xticks(list(positions), labels, rotation=30, ha="right", fontsize=8)
    axis.set(title=title, ylabel=_axis_label(key))


def placements(rows: list[dict]) -> list[dict]:
    """Every row at its (series, x), and again at each extra place its grid gives it ("also")."""
    placed = []
    for row in rows:
        placed.append(row)
        placed.extend({**row, "series": series, "x": x} for series, x in row.get("also", []))
    return placed


def in_axis_order(rows: list[dict]) -> list[dict]:
    """A panel's rows by increasing x when every x is a number (grid order otherwise)."""
    return sorted(rows, key=lambda row: row["x"]) if all(is_number(row["x"]) for row in rows) else rows


def plot_metric(results: dict, key: str, path: Path, x_label: str, log_x: bool) -> None:
    """The metric against the grid's x: lines for numeric x, one panel per series otherwise."""
    rows = placements(results["groups"])
    numeric = all(is_number(row["x"]) for row in rows)
    series = list(dict.fromkeys(row["series"] for row in rows))
    panels = 1 if numeric else len(series)
    figure, axes = plt.subplots(1, panels, figsize=(max(6.0, 3.6 * panels), 4.2), squeeze=False)
    if numeric:
        _numeric_panel(axes[0][0], rows, key, x_label, log_x)
    else:
        for axis, name in zip(axes[0], series):
            _categorical_panel(axis, in_axis_order([row for row in rows if row["series"] == name]), key, name)
    for axis in axes[0]:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(paths, out: Path) -> dict:
    """Aggregate the runs under `paths` into `out`; returns the results (results.json's content)."""
    runs, manifests = collect(paths)
    results = summarize(group_runs(runs, manifests), manifests)
    described = results["experiments"][0] if len(results["experiments"]) == 1 else {}
    x_label, log_x = described.get("x_label", "configuration"), described.get("log_x", False)
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for key in PLOTTED:
        if any(row["metrics"][key]["mean"] is not None for row in results["groups"]):
            plot_metric(results, key, out / f"{key}.png", x_label, log_x)
            plots.append(f"{key}.png")
    results["plots"] = plots
    write_json(out / RESULTS, results)
    title = described.get("title", "Results")
    images = "\n".join(f"![{_axis_label(Path(name).stem)}]({name})" for name in plots)
    (out / TABLE).write_text(f"# {title}\n\n{markdown_table(results)}\n{images}\n")
    return results


def report_text(results: dict, out: Path) -> str:
    """The table, and what was written where, as the command lines print them."""
    return f"{markdown_table(results)}\nwrote {out / RESULTS}, {out / TABLE} and {len(results['plots'])} plot(s)"
