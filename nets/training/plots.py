"""PNG plots of a run: loss/accuracy curves, and 1 - C_f per layer against step (log scale).

Matplotlib's Agg backend is used, so plotting needs no display.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .symmetry import BROKEN_BELOW  # noqa: E402

CURVES = "curves.png"
SYMMETRY = "symmetry.png"
# 1 - C_f is exactly 0 while a layer is still symmetric; a log axis cannot show 0, so such
# points are drawn on this floor (below anything float64 correlations of broken layers reach).
SYMMETRIC_FLOOR = 1e-17
# Fixed margins (fractions of the figure) that fit the labels: matplotlib's tight_layout, which
# measures them by drawing the figure once more, took half of the plots' 0.6 s.
CURVES_MARGINS = {"left": 0.07, "right": 0.98, "bottom": 0.13, "top": 0.92, "wspace": 0.22}
SYMMETRY_MARGINS = {"left": 0.1, "right": 0.8, "bottom": 0.11, "top": 0.93}


def _series(records: list[dict], kind: str, key: str):
    chosen = [r for r in records if r["kind"] == kind and r.get(key) is not None]
    return [r["step"] for r in chosen], [r[key] for r in chosen]


def plot_curves(metrics: list[dict], path: Path) -> None:
    """Train/test loss and accuracy against step."""
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(11, 4))
    figure.subplots_adjust(**CURVES_MARGINS)
    for kind, style in (("train", "-"), ("test", "o-")):
        steps, loss = _series(metrics, kind, "loss")
        loss_axis.plot(steps, loss, style, label=kind, markersize=3)
        steps, acc = _series(metrics, kind, "acc")
        acc_axis.plot(steps, [100 * a for a in acc], style, label=kind, markersize=3)
    loss_axis.set(xlabel="step", ylabel="cross-entropy loss", title="loss")
    loss_axis.set_yscale("log")
    acc_axis.set(xlabel="step", ylabel="accuracy (%)", title="accuracy", ylim=(0, 100))
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_symmetry(symmetry: list[dict], path: Path) -> None:
    """1 - C_f of every conv/linear layer against step; symmetric layers sit on the floor line."""
    figure, axis = plt.subplots(figsize=(9, 5))
    figure.subplots_adjust(**SYMMETRY_MARGINS)
    names = [layer["name"] for layer in symmetry[0]["layers"]] if symmetry else []
    colours = plt.cm.viridis([i / max(1, len(names) - 1) for i in range(len(names))])
    steps = [record["step"] for record in symmetry]
    for index, (name, colour) in enumerate(zip(names, colours)):
        gaps = [max(1.0 - record["layers"][index]["forward"], SYMMETRIC_FLOOR) for record in symmetry]
        axis.plot(steps, gaps, "o-", color=colour, label=name, markersize=3, linewidth=1)
    for level, text in ((SYMMETRIC_FLOOR, "C_f = 1 (symmetric)"), (1.0 - BROKEN_BELOW, "broken above this line")):
        axis.axhline(level, color="grey", linestyle="--", linewidth=0.8)
        axis.annotate(text, (0, level), textcoords="offset points", xytext=(4, 4), fontsize=8, color="grey")
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xlim(left=0)
    axis.set_yscale("log")
    axis.set(xlabel="step", ylabel="1 - C_f (forward correlation)", title="symmetry breaking per layer")
    axis.grid(alpha=0.3, which="both")
    if names:  # the legend right of the axes, which leave it the room it measures
        legend = axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        width = legend.get_window_extent(figure.canvas.get_renderer()).width / figure.bbox.width
        figure.subplots_adjust(right=min(SYMMETRY_MARGINS["right"], 0.97 - width))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_plots(metrics: list[dict], symmetry: list[dict], folder: Path) -> list[Path]:
    """Both plots into `folder`; returns their paths."""
    curves, layers = folder / CURVES, folder / SYMMETRY
    plot_curves(metrics, curves)
    plot_symmetry(symmetry, layers)
    return [curves, layers]
