"""Build any network of the paper by name."""
from __future__ import annotations

from torch import nn

from .checks import call_by_name
from .constnet import ConstNet
from .leakynet import LeakyNet
from .mlp import ReplicaMLP
from .transformer import Transformer
from .wideresnet import WideResNet

NETWORKS = {
    "constnet": ConstNet,
    "leakynet": LeakyNet,
    "wrn": WideResNet,
    "mlp": ReplicaMLP,
    "transformer": Transformer,
}


def build(name: str, **options) -> nn.Module:
    """`build("constnet", depth=10, widen=1)`: the network `name` (case-insensitive) with `options`.

    Names: constnet, leakynet, wrn, mlp, transformer; options are the constructor's keyword arguments, and an
    unknown name or option raises ValueError listing what is allowed.
    """
    return call_by_name("network", NETWORKS, name, options)
