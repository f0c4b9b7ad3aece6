"""Short, seeded training runs of a network for the probes: built, patched, trained, compared.

A `TrainingSetup` names a network of nets.build and a few SGD steps on random images and labels
drawn per step from (seed, step); `train` runs it through the training runs' own step with a
fresh call counter, so a run is replayable, and returns the state after every step.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

import kernels
from probes.repeat import compare_runs

from .training.models import build_network
from .training.step import make_optimizer, train_step

SMALL_CONSTNET = (("depth", 7), ("widen", 1), ("init", "zero"))


@dataclass(frozen=True)
class TrainingSetup:
    """A short, seeded training run of a network from nets.build (random images and labels)."""

    net: str = "constnet"
    net_options: tuple = SMALL_CONSTNET
    batch: int = 8
    image_size: int = 8
    in_channels: int = 3
    num_classes: int = 10
    steps: int = 3
    seed: int = 0
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def to_dict(self) -> dict:
        record = asdict(self)
        record["net_options"] = dict(self.net_options)
        return record


def net_options(net: str, pairs) -> tuple:
    """KEY=VALUE pairs as nets.build options (values parsed as JSON where they parse);
    none given for a constnet: the small zero-init ConstNet."""
    options = []
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"net option {pair!r} must be KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            options.append((key, json.loads(value)))
        except json.JSONDecodeError:
            options.append((key, value))
    if not options and net == "constnet":
        return SMALL_CONSTNET
    return tuple(options)


def build_model(setup: TrainingSetup, policy, backend: str = "auto", device="cpu") -> nn.Module:
    """The network, initialised from `setup.seed` without touching the global RNG, then patched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed)
        model = build_network(setup.net, dict(setup.net_options), setup.in_channels,
                              (setup.image_size, setup.image_size), setup.num_classes)
    model.to(device)
    if backend != "native":
        kernels.patch(model, policy, backend=backend)
    return model


def training_batch(setup: TrainingSetup, step: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels of one step, a function of (seed, step) only."""
    generator = torch.Generator().manual_seed(setup.seed * 1_000_003 + step)
    images = torch.randn(setup.batch, setup.in_channels, setup.image_size, setup.image_size, generator=generator)
    labels = torch.randint(0, setup.num_classes, (setup.batch,), generator=generator)
    return images.to(device), labels.to(device)


def snapshot(model: nn.Module) -> dict:
    """A CPU copy of the model's state_dict."""
    return {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}


def train(setup: TrainingSetup, policy, backend: str = "auto", device="cpu") -> dict:
    """Run `setup.steps` SGD steps; returns the loss and state after every step.

    {"losses": [float per step], "states": [state_dict after each step]}. A fresh call counter
    numbers the splitk calls from 0, so two runs with one seed replay the same orders.
    """
    model = build_model(setup, policy, backend, device)
    optimizer = make_optimizer(model, setup.lr, setup.momentum, setup.weight_decay)
    losses, states = [], []
    with kernels.counting(kernels.CallCounter()):
        for step in range(setup.steps):
            images, labels = training_batch(setup, step, device)
            loss, _ = train_step(model, optimizer, images, labels)
            losses.append(loss.item())
            states.append(snapshot(model))
    return {"losses": losses, "states": states}


def repeat_training(setup: TrainingSetup, policy, backend: str, runs: int, device) -> dict:
    """Train `runs` times; each later run compared to the first (probes.repeat.compare_runs)."""
    results = [train(setup, policy, backend, device) for _ in range(runs)]
    return {"setup": setup.to_dict(), "policy": policy.to_dict(), "backend": backend, **compare_runs(results)}


# A run's checkpoint.pt holds numpy's generator state (a uint32 array) beside the weights: the only
# non-torch types loading admits are those it takes (the array, its dtype, numpy's reconstructor).
NUMPY_STATE = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np.zeros(0).__reduce__()[0]]


def load_state_dict(path: str) -> dict:
    """A state_dict from a checkpoint file, or from its "model" / "state_dict" entry.

    Loaded without running any code the file names (weights_only); ValueError naming the file when
    it is not a torch file or holds no state_dict.
    """
    try:
        with torch.serialization.safe_globals(NUMPY_STATE):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a damaged or foreign file
        raise ValueError(f"{path} is not a torch file that loads safely ({type(error).__name__})") from None
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise ValueError(f"{path} holds no state_dict (a dict of tensors, or one under \"model\" or \"state_dict\")")
    return loaded
