"""The paper's experiments as grids of training runs, each run one `tools/run.py` command line.

An `Experiment` is a list of `RunSpec`s: the run.py options of one configuration and seed, plus
where the run belongs in the results (its table row `group`, and its plot position `series`,
`x`). `build_experiment(name, scale, seeds)` makes the grid of a named experiment at one scale:

  cpu    small networks on the offline datasets, minutes on two CPU cores;
  paper  the paper's networks and recipe on CIFAR-10 (PAPER.md sections 2-5), for a GPU.

Every run passes --noise-seed equal to its --seed, so seeds differ in their reduction order as
well as in their initialization and batch order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kernels import GRANULARITIES, ROLES

SCALES = ("cpu", "paper")
EXPERIMENTS = ("table1", "table2", "table3", "figure1", "dial")
DEFAULT_SEEDS = {"cpu": (0, 1, 2), "paper": (0, 1, 2, 3)}
DATASETS_WITH_DIR = ("mnist", "cifar10")

# cpu scale: run.py's quick recipe: a ConstNet-10-1 (widths 16/16/32/64, 6 single-conv blocks)
# on the bundled 8x8 digits, batch 64, lr 0.05, 30 epochs (690 steps), about 30 s per noisy run
# on one CPU core. With fp32 splitk noise every conv layer has broken symmetry by step ~450,
# early enough for the net to train on afterwards; a fixed-order run stays exactly symmetric.
# (A shorter, hotter recipe, 300 steps at lr 0.1, left some seeds dead at chance accuracy.)
CPU_CONV = {"depth": 10, "widen": 1, "dataset": "digits", "batch_size": 64, "lr": 0.05, "epochs": 30}
# paper scale: run.py's `paper` preset (ConstNet-16-10, CIFAR-10, 300 epochs, lr 0.03, ...);
# depth and widen are given explicitly so that they hold for LeakyNet too. Table 1 trains 300
# epochs, the other experiments 200 (PAPER.md section 4).
PAPER_CONV = {"preset": "paper", "dataset": "cifar10", "depth": 16, "widen": 10}
PAPER_EPOCHS = 200
# The Wide-ResNet baseline has as many skippable blocks as the ConstNet (12 in the paper), with
# two convs per block: depth 3 * 2 * n + 4 for n blocks per stage.
WRN_DEPTH = {"cpu": 16, "paper": 28}
# Figure 1 / Appendix E: one hidden layer of 256 units on MNIST, SGD lr 0.1, batch 64.
FIGURE1 = {
    "cpu": {"net": "mlp", "depth": 2, "widen": 256, "dataset": "mnist", "batch_size": 64, "lr": 0.1,
            "momentum": 0.0, "weight_decay": 0.0, "steps": 1500},
    "paper": {"net": "mlp", "depth": 2, "widen": 256, "dataset": "mnist", "batch_size": 64, "lr": 0.1,
              "momentum": 0.0, "weight_decay": 0.0, "steps": 7500},
}
FIGURE1_REPLICAS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Replica noise eps, on the He scale of the features (nets.ReplicaMLP): small to feature-sized.
FIGURE1_NOISE = (0.01, 0.1, 1.0)
# LeakyNet Table 2: the reference code's seven init strings (13 convs: depth 16).
TABLE2_INITS = (
    ("h_hhhh_hhhh_hhhh", "13 h"),
    ("i_iiii_iiii_iiii", "13 i, 0 x 1"),
    ("1_iiii_iiii_iiii", "12 i, 1 x 1"),
    ("1_iiii_11ii_iiii", "10 i, 3 x 1"),
    ("1_iiii_1111_iiii", "8 i, 5 x 1"),
    ("1_ii11_ii11_ii11", "6 i, 7 x 1"),
    ("1_1111_1111_1111", "0 i, 13 x 1"),
)
TABLE3_DTYPES = ("fp32", "fp16", "bf16", "tf32")
TABLE3_DROPOUT = {"cpu": (0.0, 0.01), "paper": (0.0, 0.01, 0.1)}
DIAL_SPLITS = (1, 2, 4, 8, 32)
DIAL_ACCUMULATES = ("fp32", "bf16", "fp16")
NOISY = {"reduction": "splitk", "splits": 8, "granularity": "element"}


@dataclass(frozen=True)
class RunSpec:
    """One run: its table row (`group`), plot position (`series`, `x`), seed and run.py options."""

    group: str
    series: str
    x: float | str
    seed: int
    options: tuple[tuple[str, object], ...]
    also: tuple[tuple[str, float | str], ...] = ()

    @property
    def name(self) -> str:
        """The run's directory name inside the experiment's results directory."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.group.lower()).strip("-")
        return f"{slug}--seed{self.seed}"

    def argv(self, out: str | Path) -> list[str]:
        """run.py's arguments: every option as --name value (True as a bare flag), then --out."""
        arguments = []
        for key, value in self.options:
            flag = "--" + key.replace("_", "-")
            if value is True:
                arguments.append(flag)
            elif value is not None and value is not False:
                arguments += [flag, str(value)]
        return arguments + ["--out", str(out)]

    def to_dict(self) -> dict:
        return {"name": self.name, "group": self.group, "series": self.series, "x": self.x,
                "also": [list(place) for place in self.also], "seed": self.seed, "options": dict(self.options)}


@dataclass(frozen=True)
class Experiment:
    """A named grid of runs and how its results are drawn (x axis label, log scale)."""

    name: str
    scale: str
    title: str
    x_label: str
    log_x: bool
    runs: tuple[RunSpec, ...]

    def groups(self) -> list[str]:
        """The table rows, in grid order."""
        return list(dict.fromkeys(run.group for run in self.runs))

    def to_dict(self) -> dict:
        return {"experiment": self.name, "scale": self.scale, "title": self.title, "x_label": self.x_label,
                "log_x": self.log_x, "runs": [run.to_dict() for run in self.runs]}


@dataclass(frozen=True)
class _Config:
    group: str
    series: str
    x: float | str
    options: dict
    also: tuple[tuple[str, float | str], ...] = ()


def _conv_base(scale: str, table1: bool = False) -> dict:
    if scale == "cpu":
        return dict(CPU_CONV)
    return dict(PAPER_CONV) if table1 else {**PAPER_CONV, "epochs": PAPER_EPOCHS}


def _table1(scale: str) -> list[_Config]:
    base = {**_conv_base(scale, table1=True), "net": "constnet", "init": "zero"}
    rows = [
        ("ConstNet 0, fixed", {"reduction": "fixed"}),
        ("ConstNet 0, splitk", NOISY),
        ("ConstNet 0, atomic", {"reduction": "atomic", "splits": 8}),
        ("ConstNet 0, native deterministic", {"reduction": "native", "native_deterministic": True}),
        ("ConstNet 0, native", {"reduction": "native"}),
        ("ConstNet 0, fixed, 1% dropout", {"reduction": "fixed", "dropout": 0.01}),
        ("ConstNet 0, fixed, 1% dropout + stem", {"reduction": "fixed", "dropout": 0.01, "stem_dropout": 0.01}),
        ("ConstNet He, native", {"init": "he", "reduction": "native"}),
        ("Wide-ResNet He, native", {"net": "wrn", "depth": WRN_DEPTH[scale], "init": "he", "reduction": "native"}),
    ]
    return [_Config(label, "table 1", label, {**base, **extra}) for label, extra in rows]


def _table2(scale: str) -> list[_Config]:
    base = {**_conv_base(scale), "net": "leakynet", "depth": 16, **NOISY}
    return [_Config(f"LeakyNet {init} ({letters})", "table 2", letters, {**base, "init": init})
            for init, letters in TABLE2_INITS]


def _table3(scale: str) -> list[_Config]:
    base = {**_conv_base(scale), "net": "constnet", "init": "zero"}
    configs = []
    for dropout in TABLE3_DROPOUT[scale]:
        for noise, reduction in (("noise", NOISY), ("no noise", {"reduction": "fixed"})):
            series = f"{noise}, dropout {dropout:g}"
            for dtype in TABLE3_DTYPES:
                options = {**base, **reduction, "dtype": dtype, "dropout": dropout}
                configs.append(_Config(f"{dtype}, {series}", series, dtype, options))
    return configs


def _figure1(scale: str) -> list[_Config]:
    base = FIGURE1[scale]
    configs = []
    for noise in (0.0, *FIGURE1_NOISE):
        series = "no noise" if noise == 0 else f"noise {noise:g}"
        for replicas in FIGURE1_REPLICAS:
            unique = base["widen"] // replicas
            init = f"replicas={replicas}" + (f",noise={noise:g}" if noise else "")
            configs.append(_Config(f"{unique} unique features, {series}", series, unique,
                                   {**base, "reduction": "native", "init": init}))
    return configs


def _dial(scale: str) -> list[_Config]:
    """One axis of the noise dial at a time, the others at the reference: splitk 8, element, fp32, all roles.

    The reference configuration runs once and is drawn on every axis (`also`).
    """
    base = {**_conv_base(scale), "net": "constnet", "init": "zero"}
    reference = _Config("reference: splits 8, element, fp32, all roles", "splits", NOISY["splits"],
                        {**base, **NOISY},
                        also=(("granularity", NOISY["granularity"]), ("accumulate", "fp32"), ("role", "all")))
    configs = [_Config("fixed (no noise)", "role", "none", {**base, "reduction": "fixed"})]
    configs += [_Config(f"splits {splits}", "splits", splits, {**base, **NOISY, "splits": splits})
                for splits in DIAL_SPLITS if splits != NOISY["splits"]]
    configs.append(reference)
    configs += [_Config(f"granularity {granularity}", "granularity", granularity,
                        {**base, **NOISY, "granularity": granularity})
                for granularity in GRANULARITIES if granularity != NOISY["granularity"]]
    configs += [_Config(f"accumulate {accumulate}", "accumulate", accumulate,
                        {**base, **NOISY, "accumulate": accumulate})
                for accumulate in DIAL_ACCUMULATES if accumulate != "fp32"]
    configs += [_Config(f"noise in {role} only", "role", role, {**base, **NOISY, "reduction": "fixed", role: "splitk"})
                for role in ROLES]
    return configs


BUILDERS = {"table1": _table1, "table2": _table2, "table3": _table3, "figure1": _figure1, "dial": _dial}
TITLES = {
    "table1": ("Table 1: symmetry breakers for a zero-initialised ConstNet", "configuration", False),
    "table2": ("Table 2: LeakyNet init strings", "init (identity / averaging layers)", False),
    "table3": ("Table 3: precision x computation noise x dropout", "dtype", False),
    "figure1": ("Figure 1: replica MLP on MNIST", "unique hidden features", True),
    "dial": ("The noise dial: a zero-initialised ConstNet", "setting", False),
}


def _ordered_options(options: dict, seed: int, data_dir: str | None) -> tuple[tuple[str, object], ...]:
    """The run.py options in a stable order: preset first, then as given, seed and data last."""
    options = dict(options)
    ordered = [("preset", options.pop("preset"))] if "preset" in options else []
    ordered += list(options.items())
    ordered += [("seed", seed), ("noise_seed", seed)]
    if options.get("dataset") in DATASETS_WITH_DIR:
        if data_dir is None:
            raise ValueError(f"--data-dir is required: this grid reads {options['dataset']} from disk")
        ordered.append(("data_dir", str(data_dir)))
    return tuple(ordered)


def build_experiment(name: str, scale: str = "cpu", seeds=None, data_dir: str | Path | None = None) -> Experiment:
    """The grid of experiment `name` at `scale`, one run per configuration and seed.

    `seeds` defaults to DEFAULT_SEEDS[scale]; `data_dir` is passed to the runs whose dataset is
    read from disk (mnist, and cifar10 at paper scale), and is required when there are any.
    Runs are ordered seed by seed, so an experiment stopped early has whole tables for its first seeds.
    """
    if name not in BUILDERS:
        raise ValueError(f"experiment={name!r} is not allowed; choose one of {', '.join(EXPERIMENTS)}")
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not allowed; choose one of {', '.join(SCALES)}")
    seeds = tuple(DEFAULT_SEEDS[scale] if seeds is None else seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds={seeds!r} is not allowed; give one or more ints >= 0")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r} repeats a seed")
    runs = tuple(
        RunSpec(config.group, config.series, config.x, seed, _ordered_options(config.options, seed, data_dir),
                config.also)
        for seed in seeds
        for config in BUILDERS[name](scale)
    )
    title, x_label, log_x = TITLES[name]
    return Experiment(name, scale, title, x_label, log_x, runs)
