"""The one network builder: a network for a dataset's shape, from a run's options or from explicit ones.

The shape options mean, per network:
  constnet  --depth/--widen as in WRN-d-k, --init zero|he, --dropout, --stem-dropout
  leakynet  --depth/--widen, --init a letter string such as 1_ii_ii_ii (i, 1, h), dropouts
  wrn       --depth/--widen (two convs per block), He init only (--init he), --dropout
  mlp       the replica MLP: --widen hidden units, --init "replicas=R" or "replicas=R,noise=EPS";
            one hidden layer (--depth 2)
  transformer  a small vision transformer (nets.transformer): --depth encoder layers of --widen
            features, --dropout inside them, torch's own initialisation (--init torch)
When --net names another network than the preset's, the options it does not give explicitly
take the network's own defaults (config.NET_DEFAULTS) instead of the preset's.
"""
from __future__ import annotations

import math

from torch import nn

import nets

from .config import RunConfig

MLP_DEPTH = 2


def mlp_init_options(init: str) -> dict:
    """"replicas=4,noise=0.01" -> {"replicas": 4, "noise": 0.01} (the replica MLP's init)."""
    options = {}
    for entry in filter(None, (part.strip() for part in init.split(","))):
        key, _, value = entry.partition("=")
        try:
            if key == "replicas":
                options[key] = int(value)
            elif key == "noise":
                options[key] = float(value)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"--init={init!r} is not a replica-MLP init; use 'replicas=R' or 'replicas=R,noise=EPS'"
            ) from None
    return options


def model_options(config: RunConfig) -> dict:
    """The network options of nets.build for this run (the data's shape aside)."""
    if config.net == "mlp":
        if config.depth != MLP_DEPTH:
            raise ValueError(
                f"--depth={config.depth} is not allowed for --net mlp: it has one hidden layer (--depth 2)")
        if config.dropout + config.stem_dropout > 0:
            raise ValueError("--dropout/--stem-dropout are not available for --net mlp")
        return {"width": config.widen, **mlp_init_options(config.init)}
    if config.net == "transformer":
        if config.init != "torch":
            raise ValueError(f"--init={config.init!r} is not allowed for --net transformer: it keeps torch's "
                             "own initialisation (torch)")
        if config.stem_dropout:
            raise ValueError("--stem-dropout is not available for --net transformer")
        return {"depth": config.depth, "width": config.widen, "dropout": config.dropout}
    options = {"depth": config.depth, "widen": config.widen, "dropout": config.dropout}
    if config.net == "wrn":
        if config.init != "he":
            raise ValueError(
                f"--init={config.init!r} is not allowed for --net wrn: the baseline is He-initialised (he)")
        if config.stem_dropout:
            raise ValueError("--stem-dropout is not available for --net wrn (its blocks carry the dropout)")
        return options
    return {**options, "stem_dropout": config.stem_dropout, "init": config.init}


def build_network(net: str, options: dict, in_channels: int, image_size: tuple[int, int],
                  num_classes: int) -> nn.Module:
    """nets.build(net, **options) for images of this shape: the MLP sees them flattened.

    Initialised from torch's global generator (seed it, or fork it, first).
    """
    if net.lower() == "mlp":
        inputs = {"in_features": in_channels * math.prod(image_size)}
    else:
        inputs = {"in_channels": in_channels}
    return nets.build(net, **inputs, num_classes=num_classes, **options)


def build_model(config: RunConfig, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """The run's network, initialised from torch's global generator (seed it first)."""
    return build_network(config.net, model_options(config), in_channels, image_size, num_classes)
