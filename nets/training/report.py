"""Human-readable output of a run: progress lines and the final table."""
from __future__ import annotations

import math

from probes.table import align


def format_correlation(c: float | None) -> str:
    """C_f so that its distance from 1 stays visible: 1 exactly, 1 - 3.2e-07, or 0.8123 (NaN: weights not finite)."""
    if c is None:
        return "-"
    if math.isnan(c):
        return "nan (weights not finite)"
    if c >= 1.0:
        return "1 (exact)"
    return f"1 - {1.0 - c:.1e}" if c > 0.999 else f"{c:.4f}"


def progress_line(record: dict, total_steps: int, max_forward: float | None) -> str:
    """One line per train record: step, epoch, loss, accuracy, rate, current max C_f."""
    return (
        f"step {record['step']:>6}/{total_steps}  epoch {record['epoch']:6.2f}  loss {record['loss']:.4f}  "
        f"acc {100 * record['acc']:5.1f}%  lr {record['lr']:.3g}  {record['images_per_s']:7.0f} img/s  "
        f"max C_f {format_correlation(max_forward)}"
    )


def test_line(record: dict) -> str:
    return (f"test  step {record['step']:>6}  epoch {record['epoch']:6.2f}  loss {record['loss']:.4f}  "
            f"acc {100 * record['acc']:5.1f}%")


def final_table(summary: dict, last_symmetry: dict | None) -> str:
    """The run's summary and its last per-layer symmetry record, as aligned text."""
    percent = lambda value: "-" if value is None else f"{100 * value:.2f}%"  # noqa: E731
    broke, first = summary["symmetry_broke_step"], summary["first_layer_broke_step"]
    broke_at = summary["layer_broke_steps"]
    lines = align([
        ("run", summary["run_dir"]),
        ("numerics", summary["numerics"]),
        ("steps", f"{summary['steps']} ({summary['epochs']:.2f} epochs)"),
        ("final test accuracy", percent(summary["final_test_acc"])),
        ("best test accuracy", f"{percent(summary['best_test_acc'])} at step {summary['best_test_step']}"),
        ("first layer broke at step", "never" if first is None else str(first)),
        ("every layer broke at step", "not yet (max C_f >= threshold)" if broke is None else str(broke)),
        ("broken means", f"forward C_f < 1 - {1 - summary['symmetry_threshold']:.0e} "
                         f"(max over {len(summary['symmetry_layers'])} layers: every one broken)"),
        ("final max C_f", format_correlation(summary["final_max_forward"])),
        ("mean dissimilarity", "-" if summary["final_mean_dissimilarity"] is None
         else f"{summary['final_mean_dissimilarity']:.4f}"),
        ("total time", f"{summary['total_seconds']:.1f} s"),
        ("throughput", f"{summary['images_per_s']:.0f} images/s (training steps only)"),
    ])
    if last_symmetry:
        lines += ["", f"per-layer symmetry at step {last_symmetry['step']}:"]
        lines += align([("layer", "out", "in", "C_f", "C_b", "eff. width", "broke at step")] + [
            (layer["name"], str(layer["n_out"]), str(layer["n_in"]), format_correlation(layer["forward"]),
             format_correlation(layer["backward"]), f"{layer['effective_width']:.1f}",
             str(broke_at.get(layer["name"], "-")))
            for layer in last_symmetry["layers"]
        ])
    return "\n".join(lines)
