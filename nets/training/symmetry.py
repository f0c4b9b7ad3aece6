"""Watching symmetry break during training: when to record it, and what counts as broken.

A record (one line of symmetry.jsonl) holds probes.model_symmetry of the model: the forward and
backward correlation and effective width of every conv/linear layer, the maximum forward
correlation C_f and the mean dissimilarity over the summarised layers. Records are taken at
step 0, at every power-of-two step (where symmetry breaks, early on), at every epoch end and at
the last step.

Symmetry counts as broken at the first step where max C_f < BROKEN_BELOW = 1 - 1e-6, i.e.
where the most alike layer's filters have a dissimilarity sqrt(1 - C_f^2) above about 1.4e-3: far
above the float64 rounding of the correlation itself (~1e-16, so an exactly symmetric layer
never crosses it), and reached early in the exponential growth of a rounding-size (~1e-7)
perturbation. Until it breaks, max C_f is computed after every step, so the reported step is
exact, not rounded to the record schedule.

The summarised layers are the convolutions (as in the paper's Table 2; a classifier's rows are
classes, not interchangeable features), or every linear layer in a network without convolutions.
"""
from __future__ import annotations

from torch import nn

import probes

BROKEN_BELOW = 1.0 - 1e-6


def summary_kinds(model: nn.Module) -> tuple[str, ...]:
    has_conv = any(isinstance(module, nn.Conv2d) for module in model.modules())
    return ("conv",) if has_conv else ("linear",)


def record_due(step: int, steps_per_epoch: int, total_steps: int) -> bool:
    """Step 0, powers of two, epoch ends and the last step."""
    return step == 0 or step & (step - 1) == 0 or step % steps_per_epoch == 0 or step == total_steps


def symmetry_record(model: nn.Module, step: int, epoch: float) -> dict:
    """One symmetry.jsonl line for the model as it is now."""
    measured = probes.model_symmetry(model, summary_kinds=summary_kinds(model))
    return {"step": step, "epoch": epoch, **measured}


def max_forward(model: nn.Module) -> float:
    """max C_f over the summarised layers (the cheap per-step check: forward correlations only)."""
    kinds = summary_kinds(model)
    layer_kind = {nn.Conv2d: "conv", nn.Linear: "linear"}
    return max(
        probes.forward_correlation(module.weight)
        for module in model.modules()
        for base, kind in layer_kind.items()
        if isinstance(module, base) and kind in kinds
    )
