"""Watching symmetry break during training: when to record it, and what counts as broken.

A record (one line of symmetry.jsonl) holds probes.model_symmetry of the model: the forward and
backward correlation and effective width of every conv/linear layer, the maximum forward
correlation C_f and the mean dissimilarity over the summarised layers. Records are taken at
step 0, at every power-of-two step (where symmetry breaks, early on), at every epoch end and at
the last step.

A layer counts as broken from the first step where its C_f < BROKEN_BELOW = 1 - 1e-6, and the
network's symmetry as broken at the first step where max C_f < BROKEN_BELOW (every summarised
layer below it at once), i.e.
where the most alike layer's filters have a dissimilarity sqrt(1 - C_f^2) above about 1.4e-3: far
above the float64 rounding of the correlation itself (~1e-16, so an exactly symmetric layer
never crosses it), and reached early in the exponential growth of a rounding-size (~1e-7)
perturbation. Until the network's symmetry breaks, every C_f is computed after every step, so
the reported steps are exact, not rounded to the record schedule.

The summarised layers are the convolutions (as in the paper's Table 2; a classifier's rows are
classes, not interchangeable features), or in a network without convolutions every linear layer
but the classifier.
"""
from __future__ import annotations

from torch import nn

import probes
from probes.symmetry import max_correlation
from kernels import reducing_layers

BROKEN_BELOW = 1.0 - 1e-6


def summarised_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose forward correlation says whether features are symmetric, by name.

    Every convolution; in a network without convolutions (the replica MLP), every linear layer
    but the last, whose rows are the classes.
    """
    layers = reducing_layers(model)
    convs = [(name, m) for name, m in layers if isinstance(m, nn.Conv2d)]
    return convs or layers[:-1]


def record_due(step: int, steps_per_epoch: int, total_steps: int) -> bool:
    """Step 0, powers of two, epoch ends and the last step."""
    return step == 0 or step & (step - 1) == 0 or step % steps_per_epoch == 0 or step == total_steps


def symmetry_record(model: nn.Module, step: int, epoch: float) -> dict:
    """One symmetry.jsonl line: every conv/linear layer, and the summary over the summarised ones."""
    layers = probes.model_symmetry(model)["layers"]
    names = [name for name, _ in summarised_layers(model)]
    forward = [layer["forward"] for layer in layers if layer["name"] in names]
    return {
        "step": step,
        "epoch": epoch,
        "layers": layers,
        "summary_layers": names,
        "max_forward": max_correlation(forward),
        "mean_dissimilarity": probes.mean_dissimilarity(forward),
    }


def forward_correlations(model: nn.Module) -> dict[str, float]:
    """C_f of every summarised layer by name (the cheap per-step check: no backward correlations)."""
    return {name: probes.forward_correlation(module.weight) for name, module in summarised_layers(model)}


def summarised_forward(record: dict) -> dict[str, float]:
    """The same mapping, read from a symmetry record."""
    names = record["summary_layers"]
    return {layer["name"]: layer["forward"] for layer in record["layers"] if layer["name"] in names}
