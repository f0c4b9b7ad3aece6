"""The symmetry-breaking perturbation of features (paper appendix G).

For a feature tensor F of shape (N, C, ...) the symmetric part is its projection onto the
all-ones channel direction, i.e. the channel mean broadcast back over the channels; the
perturbation is the rest. The probe reports

    ||F - mean_over_channels(F)|| / ||F||

which is 0 when every channel carries the same feature and grows as the channels drift apart.
A feature tensor that is entirely zero has no component off the symmetric direction: its ratio
is reported as 0.

`symmetry_perturbation` measures it for the forward features (each layer's output) and the
backward features (the loss gradient with respect to that output) during one training step.
"""
from __future__ import annotations

import torch
from torch import nn


def perturbation_ratio(features: torch.Tensor) -> float:
    """Norm of the part of `features` (N, C, ...) orthogonal to the all-ones channel direction, over its norm."""
    if not isinstance(features, torch.Tensor) or features.dim() < 2:
        raise ValueError("features must be a tensor of shape (N, C, ...) with a channel dimension 1")
    f = features.detach().to(torch.float64)
    total = torch.linalg.vector_norm(f)
    if total == 0:
        return 0.0
    orthogonal = f - f.mean(dim=1, keepdim=True)
    return float(torch.linalg.vector_norm(orthogonal) / total)


def symmetry_perturbation(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn,
                          optimizer: torch.optim.Optimizer | None = None,
                          layer_types: tuple = (nn.Conv2d, nn.Linear)) -> list[dict]:
    """One training step with hooks on every `layer_types` module; per layer, in call order:

    {"name", "forward": ratio of the layer's output, "backward": ratio of d loss / d output}.
    With an optimizer the step zeroes the gradients first and steps after the backward pass;
    without one, the gradients are accumulated into .grad and no parameter changes.
    """
    captured: dict[str, dict] = {}
    handles = []

    def hook(name):
        def record(_module, _inputs, output):
            captured[name] = {"name": name, "forward": perturbation_ratio(output), "backward": None}
            if output.requires_grad:
                output.register_hook(lambda grad: captured[name].update(backward=perturbation_ratio(grad)))
        return record

    for name, module in model.named_modules():
        if isinstance(module, layer_types):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        if optimizer is not None:
            optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        if optimizer is not None:
            optimizer.step()
    finally:
        for handle in handles:
            handle.remove()
    return list(captured.values())
