"""The network of a run, built from its options and its dataset's shape.

The shape options mean, per network:
  constnet  --depth/--widen as in WRN-d-k, --init zero|he, --dropout, --stem-dropout
  leakynet  --depth/--widen, --init a letter string such as 1_ii_ii_ii (i, 1, h), dropouts
  wrn       --depth/--widen (two convs per block), He init only (--init he), --dropout
  mlp       the replica MLP: --widen hidden units, --init "replicas=R" or "replicas=R,noise=EPS";
            one hidden layer (--depth 2)
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


def model_options(config: RunConfig, in_channels: int, image_size: tuple[int, int], num_classes: int) -> dict:
    """The keyword arguments of nets.build for this run's network and data."""
    common = {"num_classes": num_classes}
    if config.net == "mlp":
        if config.depth != MLP_DEPTH:
            raise ValueError(
                f"--depth={config.depth} is not allowed for --net mlp: it has one hidden layer (--depth 2)")
        return {**common, "in_features": in_channels * math.prod(image_size), "width": config.widen,
                **mlp_init_options(config.init)}
    options = {**common, "depth": config.depth, "widen": config.widen, "in_channels": in_channels,
               "dropout": config.dropout}
    if config.net == "wrn":
        if config.init != "he":
            raise ValueError(
                f"--init={config.init!r} is not allowed for --net wrn: the baseline is He-initialised (he)")
        if config.stem_dropout:
            raise ValueError("--stem-dropout is not available for --net wrn (its blocks carry the dropout)")
        return options
    return {**options, "stem_dropout": config.stem_dropout, "init": config.init}


def build_model(config: RunConfig, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """The run's network, initialised from torch's global generator (seed it first)."""
    if config.net == "mlp" and config.dropout + config.stem_dropout > 0:
        raise ValueError("--dropout/--stem-dropout are not available for --net mlp")
    return nets.build(config.net, **model_options(config, in_channels, image_size, num_classes))
