"""The options of one training run, the presets they start from, and how they are checked.

`RunConfig` holds every option; `build_config(preset, overrides)` applies a preset and then the
options given explicitly (an explicit option always wins). Everything in a RunConfig is written
to the run's config.json, so a run can be resumed or repeated from that file alone.
"""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, fields, replace

from kernels import GRANULARITIES, KERNEL_ACCUMULATES, KERNEL_PRECISIONS, MODES, ROLES
from kernels.allreduce import ALLREDUCE_MODES

NETS = ("constnet", "leakynet", "wrn", "mlp", "transformer")
DATASETS = ("digits", "synthetic", "mnist", "cifar10")
# --reduction: a mode of our kernels in every role, or torch's own kernels unpatched
REDUCTIONS = (*MODES, "native")
# --intercept: how the policy reaches the network: kernels.patch swaps its Conv2d/Linear layers;
# dispatch runs every training step and evaluation under kernels.policy_mode (every aten matmul
# and convolution, attention included); function under kernels.function_policy_mode (F.conv2d,
# F.linear, the matmul family and attention as Python calls them)
INTERCEPTS = ("patch", "dispatch", "function")

# Options a resumed run may change: how long it trains. Any other change would make the
# resumed run a different run from the one its checkpoint belongs to.
RESUMABLE_OPTIONS = ("epochs", "steps")
# numpy and torch take seeds below 2**32; the splitk order function works modulo 2**32
SEED_LIMIT = 2**32
# Beyond these a network takes hours just to build (depth; the deepest residual networks trained
# have about 1000 layers) or cannot exist in memory (widen; --widen is the MLP's hidden units)
LARGEST = {"depth": 1000, "widen": 2**16}


@dataclass(frozen=True)
class RunConfig:
    """Every option of a training run (defaults are the `quick` preset's)."""

    preset: str = "quick"
    # network
    net: str = "constnet"
    init: str | None = "zero"
    depth: int = 10
    widen: int = 1
    dropout: float = 0.0
    stem_dropout: float = 0.0
    # numerics: the reduction policy of every conv/linear layer
    reduction: str = "splitk"
    splits: int | None = None
    granularity: str = "element"
    noise_seed: int = 0
    forward: str | None = None
    input_grad: str | None = None
    weight_grad: str | None = None
    dtype: str = "fp32"
    accumulate: str = "fp32"
    native_deterministic: bool = False
    intercept: str = "patch"
    # data parallel: the gradient all-reduce, BatchNorm across ranks, R ranks replayed in one process
    allreduce: str = "native"
    sync_bn: bool = False
    micro_batches: int = 1
    # data and optimisation
    dataset: str = "digits"
    data_dir: str | None = None
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int | None = 30
    steps: int | None = None
    lr_milestones: str = ""
    lr_gamma: float = 0.2
    seed: int = 0
    device: str = "auto"
    # bookkeeping
    log_every: int = 10
    eval_batch_size: int = 512

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown run options {unknown}; known options: {sorted(known)}")
        _check_types(values)
        return cls(**values)


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _check_types(values: dict) -> None:
    """Each value has its option's type (a float option also takes an int; no option takes a bool
    unless it is a flag), so that a hand-edited config.json fails naming the option."""
    hints = typing.get_type_hints(RunConfig)
    for name, value in values.items():
        allowed = typing.get_args(hints[name]) or (hints[name],)
        accepted = (*allowed, int) if float in allowed else allowed
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in allowed):
            kinds = " or ".join(TYPE_NAMES[kind] for kind in allowed)
            raise ValueError(f"{flag(name)}={value!r} is not allowed; it must be {kinds}")


PRESETS: dict[str, dict] = {
    # A zero-init ConstNet (depth 10, widen 1) on the bundled 8x8 digits, 30 epochs (690 steps),
    # about 26 s on 2 CPU cores. Measured: splitk noise breaks every conv layer's symmetry by
    # step 422 (454, 429 with --noise-seed 1, 2) and reaches 95.8% test accuracy (93.3%, 95.8%);
    # --reduction fixed keeps every filter identical (C_f = 1) and ends at 32.2%.
    "quick": {},
    # The paper's Table 1 recipe: WRN-16-10 ConstNet on CIFAR-10 (PAPER.md section 4).
    "paper": {
        "net": "constnet",
        "init": "zero",
        "depth": 16,
        "widen": 10,
        "dataset": "cifar10",
        "batch_size": 128,
        "lr": 0.03,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 300,
        "steps": None,
        "lr_milestones": "E-140,E-80,E-40",
        "lr_gamma": 0.2,
        "log_every": 50,
    },
}


# The network options a preset's values are replaced by when --net names another network
# (None: the network's own default, e.g. LeakyNet's 1_ii.._ii.. string).
NET_DEFAULTS = {
    "constnet": {"init": "zero"},
    "leakynet": {"init": None},
    "wrn": {"init": "he"},
    "mlp": {"init": "replicas=1", "depth": 2, "widen": 128},
    "transformer": {"init": "torch", "depth": 2, "widen": 32},
}


def build_config(preset: str, overrides: dict) -> RunConfig:
    """The preset's options with `overrides` (the explicitly given options) applied on top."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed; choose one of {', '.join(map(repr, PRESETS))}")
    if overrides.get("epochs") is not None and overrides.get("steps") is not None:
        raise ValueError("give --epochs or --steps, not both")
    values = dict(PRESETS[preset])
    net = overrides.get("net")
    if net is not None and net != values.get("net", RunConfig.net):
        values.update(NET_DEFAULTS.get(net, {}))
    values.update(overrides, preset=preset)
    if overrides.get("steps") is not None:
        values["epochs"] = None
    elif overrides.get("epochs") is not None:
        values["steps"] = None
    config = RunConfig.from_dict({**RunConfig().to_dict(), **values})
    check_config(config)
    return config


def saved_config(record: dict, source) -> RunConfig:
    """The options of a run's config.json `record` (read from `source`), checked; errors name the file."""
    for key in ("options", "derived"):
        if not isinstance(record.get(key), dict):
            raise ValueError(f"{source} has no {key!r} object, so it is not a run's config.json")
    try:
        config = RunConfig.from_dict(record["options"])
        check_config(config)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    return config


def resumed_config(saved: RunConfig, overrides: dict) -> RunConfig:
    """The saved run's config, lengthened by --epochs/--steps; any other change is refused."""
    changed = {
        name: value for name, value in overrides.items()
        if name not in RESUMABLE_OPTIONS and getattr(saved, name) != value
    }
    if changed:
        listing = ", ".join(f"{flag(name)}={value} (the run has {getattr(saved, name)!r})"
                            for name, value in changed.items())
        raise ValueError(f"a resumed run keeps its options; drop {listing}")
    if overrides.get("epochs") is not None and overrides.get("steps") is not None:
        raise ValueError("give --epochs or --steps, not both")
    if overrides.get("steps") is not None:
        saved = replace(saved, steps=overrides["steps"], epochs=None)
    elif overrides.get("epochs") is not None:
        saved = replace(saved, epochs=overrides["epochs"], steps=None)
    check_config(saved)
    return saved


def flag(name: str) -> str:
    """The command-line spelling of an option: noise_seed -> --noise-seed."""
    return "--" + name.replace("_", "-")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{flag(name)}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _at_least(name: str, value, low) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{flag(name)}={value} is not allowed; it must be a finite number >= {low}")
    if value is not None and value < low:
        raise ValueError(f"{flag(name)}={value} is not allowed; it must be >= {low}")


def check_config(config: RunConfig) -> None:
    """Reject option values and combinations no run can honour, naming the option to fix."""
    _choice("net", config.net, NETS)
    _choice("dataset", config.dataset, DATASETS)
    _choice("reduction", config.reduction, REDUCTIONS)
    _choice("intercept", config.intercept, INTERCEPTS)
    _choice("granularity", config.granularity, GRANULARITIES)
    _choice("dtype", config.dtype, KERNEL_PRECISIONS)
    _choice("accumulate", config.accumulate, KERNEL_ACCUMULATES)
    _choice("allreduce", config.allreduce, ALLREDUCE_MODES)
    for role in ROLES:
        if getattr(config, role) is not None:
            _choice(role, getattr(config, role), MODES)
    for name, low in (("depth", 1), ("widen", 1), ("splits", 1), ("batch_size", 1), ("epochs", 1), ("micro_batches", 1),
                      ("steps", 1), ("log_every", 1), ("eval_batch_size", 1), ("noise_seed", 0), ("seed", 0),
                      ("lr", 0.0), ("momentum", 0.0), ("weight_decay", 0.0), ("lr_gamma", 0.0)):
        _at_least(name, getattr(config, name), low)
    for name, high in LARGEST.items():
        if getattr(config, name) > high:
            raise ValueError(f"{flag(name)}={getattr(config, name)} is not allowed; it must be <= {high}")
    for name in ("dropout", "stem_dropout", "momentum"):
        if not 0.0 <= getattr(config, name) < 1.0:
            raise ValueError(f"{flag(name)}={getattr(config, name)} is not allowed; it must be in [0, 1)")
    for name in ("seed", "noise_seed"):
        if not getattr(config, name) < SEED_LIMIT:
            raise ValueError(f"{flag(name)}={getattr(config, name)} is not allowed; it must be in [0, 2**32)")
    if (config.epochs is None) == (config.steps is None):
        raise ValueError("give exactly one of --epochs or --steps")
    if config.reduction == "native":
        overridden = [role for role in ROLES if getattr(config, role)]
        if overridden:
            flags = ", ".join(flag(role) for role in overridden)
            raise ValueError(f"{flags} need --reduction fixed, splitk or atomic (native runs torch's own kernels)")
        if config.accumulate != "fp32":
            raise ValueError("--accumulate applies to our kernels; --reduction native accumulates as torch does")
        if config.intercept != "patch":
            raise ValueError(f"--intercept {config.intercept} needs --reduction fixed, splitk or atomic "
                             "(native runs torch's own kernels)")
    elif config.native_deterministic:
        raise ValueError("--native-deterministic applies to --reduction native only")
    lr_milestone_epochs(config.lr_milestones, 1.0)  # validates the syntax


def lr_milestone_epochs(spec: str, total_epochs: float) -> list[float]:
    """Epochs at which the learning rate is multiplied by lr_gamma, sorted.

    `spec` is a comma-separated list of epoch numbers; an entry "E-40" counts back from the end
    of training (the paper's E-140, E-80, E-40). An empty spec means a constant rate.
    """
    epochs = []
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        relative = entry.upper().startswith("E-")
        number = entry[2:] if relative else entry
        try:
            value = float(number)
        except ValueError:
            raise ValueError(
                f"--lr-milestones entry {entry!r} is not an epoch; use numbers like 100 or E-40 (40 before the end)"
            ) from None
        if not 0 <= value < math.inf:
            raise ValueError(f"--lr-milestones entry {entry!r} is not allowed; epochs are finite and >= 0")
        epochs.append(total_epochs - value if relative else value)
    return sorted(epochs)


class LRSchedule:
    """lr * gamma ** (number of milestones reached); milestones in steps."""

    def __init__(self, lr: float, gamma: float, milestone_steps: list[int]):
        self.lr, self.gamma, self.milestone_steps = lr, gamma, milestone_steps

    def at(self, step: int) -> float:
        return self.lr * self.gamma ** sum(step >= milestone for milestone in self.milestone_steps)

    def to_dict(self) -> dict:
        return {"lr": self.lr, "gamma": self.gamma, "milestone_steps": self.milestone_steps}
