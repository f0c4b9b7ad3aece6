"""`kernels.patch`: make every conv and linear layer of a model follow a reduction policy."""
from __future__ import annotations

from torch import nn

from .modules import Conv2d, Linear, check_backend_name, unsupported_conv_reason
from .reduction import as_policy

DROP_INS = {nn.Conv2d: Conv2d, Conv2d: Conv2d, nn.Linear: Linear, Linear: Linear}


def _unsupported_reason(layer: nn.Module) -> str | None:
    if type(layer) not in DROP_INS:
        base = "nn.Conv2d" if isinstance(layer, nn.Conv2d) else "nn.Linear"
        return (
            f"{type(layer).__qualname__} subclasses {base} with behaviour of its own; "
            "only nn.Conv2d and nn.Linear themselves can be patched"
        )
    if isinstance(layer, nn.Conv2d):
        return unsupported_conv_reason(layer)
    return None


def patch(model: nn.Module, policy, *, backend: str = "auto") -> int:
    """Turn every nn.Conv2d and nn.Linear of `model` (itself included) into kernels.Conv2d /
    kernels.Linear in place, following `policy` on `backend`; return how many layers follow it.

    Each layer object is kept (parameters, buffers, hooks, references; see Conv2d.adopt), so
    optimizers and state_dict keep working. Layers that already are kernels.Conv2d / Linear
    take the new policy and backend and are counted. Every layer is checked first: a
    configuration kernels.conv2d cannot honour raises ValueError naming each such layer by its
    qualified name, and the model is left unchanged.
    """
    policy = as_policy(policy)
    check_backend_name(backend)
    layers = [
        (name, layer) for name, layer in model.named_modules() if isinstance(layer, (nn.Conv2d, nn.Linear))
    ]
    problems = []
    for name, layer in layers:
        reason = _unsupported_reason(layer)
        if reason is not None:
            problems.append(f"layer {name or '<the model itself>'!r} ({type(layer).__name__}): {reason}")
    if problems:
        raise ValueError("kernels.patch cannot honour " + "; ".join(problems))
    for _, layer in layers:
        DROP_INS[type(layer)].adopt(layer, policy, backend)
    return len(layers)
