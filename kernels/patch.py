"""`kernels.patch`: make every conv and linear layer of a model follow a reduction policy."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .backends import check_backend_name
from .checks import check_flag, check_module
from .geometry import conv_output_size, conv_reduction_lengths, linear_reduction_lengths
from .modules import Conv2d, Linear, reducing_layers, unsupported_conv_reason
from .reduction import ROLES, Policy, as_policy

DROP_INS = {nn.Conv2d: Conv2d, Conv2d: Conv2d, nn.Linear: Linear, Linear: Linear}
# Layers that reduce but have no drop-in: patch leaves them on torch's kernels and says so.
OTHER_REDUCING = (
    nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Bilinear, nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase,
)


@dataclass
class PatchReport:
    """What `patch` did, by qualified layer name ("" is the model itself).

    patched: the layers that now follow the policy, in model order.
    skipped: reducing layers left on torch's own kernels, each with the reason.
    caps:    for each patched layer whose reductions in the shape pass were shorter than the
             policy's splits, role -> the splits it got (its reduction length K).
    """

    patched: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    caps: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.patched)


def _skip_reason(layer: nn.Module) -> str | None:
    """Why patch cannot take this layer, or None if it can."""
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        if type(layer) not in DROP_INS:
            base = "nn.Conv2d" if isinstance(layer, nn.Conv2d) else "nn.Linear"
            return (f"{type(layer).__qualname__} subclasses {base} with behaviour of its own; "
                    "only nn.Conv2d and nn.Linear themselves can be patched")
        reason = unsupported_conv_reason(layer) if isinstance(layer, nn.Conv2d) else None
        return None if reason is None else f"{type(layer).__name__}: {reason}"
    if isinstance(layer, OTHER_REDUCING):
        return f"{type(layer).__name__}: no drop-in (kernels has Conv2d and Linear)"
    return None


def _describe(skipped: dict[str, str]) -> str:
    return "; ".join(f"{name or '<the model itself>'!r} ({reason})" for name, reason in skipped.items())


def _layer_lengths(layer: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """K of each role of a conv or linear layer called on input x."""
    if isinstance(layer, nn.Conv2d):
        batch = x.shape[0] if x.dim() == 4 else 1
        kh, kw = layer.kernel_size
        h_out, w_out = map(conv_output_size, x.shape[-2:], layer.kernel_size, layer.stride, layer.padding)
        return conv_reduction_lengths(layer.in_channels, layer.out_channels, kh, kw, batch, h_out, w_out)
    return linear_reduction_lengths(layer.in_features, layer.out_features, math.prod(x.shape[:-1]))


def reduction_lengths(model: nn.Module, layers: dict[str, nn.Module], example_input) -> dict[str, dict[str, int]]:
    """The shortest K of each role of each layer over one forward pass of `example_input`.

    The pass runs in eval mode without gradients on torch's own kernels (layers that already
    follow a policy are run natively for it), so it neither checks nor uses the splits it
    measures; layers the pass does not reach are left out.
    """
    lengths: dict[str, dict[str, int]] = {}

    def record(name):
        def hook(layer, inputs):
            seen = _layer_lengths(layer, inputs[0])
            lengths[name] = {role: min(k, lengths.get(name, seen)[role]) for role, k in seen.items()}
        return hook

    handles = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    drop_ins = {layer: layer.backend for layer in layers.values() if isinstance(layer, (Conv2d, Linear))}
    training = model.training
    try:
        for layer in drop_ins:
            layer.backend = "native"
        model.eval()
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    except (RuntimeError, ValueError, TypeError) as error:
        raise ValueError(f"example_input: the model's forward pass failed on it: {error}") from None
    finally:
        model.train(training)
        for layer, backend in drop_ins.items():
            layer.backend = backend
        for handle in handles:
            handle.remove()
    return lengths


def fit_policy(policy: Policy, lengths: dict[str, int]) -> tuple[Policy, dict[str, int]]:
    """`policy` with each role's splits capped at its reduction length, and the caps made."""
    caps = {role: lengths[role] for role in ROLES if 0 < lengths[role] < getattr(policy, role).splits}
    fitted = {role: replace(getattr(policy, role), splits=splits) for role, splits in caps.items()}
    return replace(policy, **fitted), caps


def patch(model: nn.Module, policy, *, backend: str = "auto", example_input=None, strict: bool = False) -> PatchReport:
    """Turn every nn.Conv2d and nn.Linear of `model` (itself included) into kernels.Conv2d /
    kernels.Linear in place, following `policy` on `backend`; return a PatchReport.

    Each layer object is kept (parameters, buffers, hooks, references; see Conv2d.adopt), so
    optimizers and state_dict keep working; layers that already are drop-ins take the new
    policy and backend. Reducing layers it cannot take (Conv1d, ConvTranspose2d, Bilinear,
    attention and recurrent layers, subclasses of nn.Conv2d / nn.Linear, conv configurations
    kernels.conv2d cannot run) keep torch's kernels: they are listed in `skipped` with a
    warning, or with strict=True a ValueError names them all and nothing is changed.

    With `example_input` (a tensor, or a tuple of the forward's positional arguments), one
    forward pass measures each layer's reduction lengths, and each role's splits is capped at
    its length (the weight gradient's over the batch given: pass the smallest batch the model
    will see); each layer's policy records its caps, and `caps` reports them.
    """
    policy = as_policy(policy)
    check_backend_name(backend)
    check_module("model", model)
    check_flag("strict", strict)
    skipped = {name: reason for name, layer in model.named_modules() if (reason := _skip_reason(layer)) is not None}
    if skipped and strict:
        raise ValueError(f"kernels.patch (strict) cannot take {len(skipped)} reducing layer(s): {_describe(skipped)}")
    layers = {name: layer for name, layer in reducing_layers(model) if name not in skipped}
    lengths = {} if example_input is None else reduction_lengths(model, layers, example_input)
    report = PatchReport(patched=list(layers), skipped=skipped)
    for name, layer in layers.items():
        fitted, caps = fit_policy(policy, lengths[name]) if name in lengths else (policy, {})
        if caps:
            report.caps[name] = caps
        DROP_INS[type(layer)].adopt(layer, fitted, backend)
    if skipped:
        warnings.warn(f"kernels.patch left {len(skipped)} reducing layer(s) on torch's own kernels: "
                      f"{_describe(skipped)}", stacklevel=2)
    return report
