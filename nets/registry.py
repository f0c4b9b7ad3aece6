"""Build any network of the paper by name, and list a network's reduction layers in order."""
from __future__ import annotations

from torch import nn

from .checks import call_by_name
from .constnet import ConstNet
from .leakynet import LeakyNet
from .mlp import ReplicaMLP
from .wideresnet import WideResNet

NETWORKS = {
    "constnet": ConstNet,
    "leakynet": LeakyNet,
    "wrn": WideResNet,
    "mlp": ReplicaMLP,
}


def build(name: str, **options) -> nn.Module:
    """`build("constnet", depth=10, widen=1)`: the network `name` (case-insensitive) with `options`.

    Names: constnet, leakynet, wrn, mlp; options are the constructor's keyword arguments, and an
    unknown name or option raises ValueError listing what is allowed.
    """
    return call_by_name("network", NETWORKS, name, options)


def reduction_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear (subclasses included), in registration order.

    The networks here register these layers in the order their forward pass runs them, so
    this is the order a probe sees them in; it follows `kernels.patch` replacements, since it
    looks the modules up afresh on every call.
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
