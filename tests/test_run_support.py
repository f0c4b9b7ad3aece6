"""Shared helpers of the tools/run.py tests: a tiny run configuration, the CLI, and run loaders."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from nets.training import Training, build_config, prepare_run_dir
from tools.run import main as run_cli

ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPT = ROOT / "tools" / "run.py"

# A ConstNet with one block per stage (7 convs + fc, widths 16/16/32/64) on digits, 256 images
# per batch: 6 steps per epoch (1437 training images), a few tens of milliseconds per step.
TINY = {"depth": 7, "widen": 1, "batch_size": 256}
TINY_ARGS = ["--depth", "7", "--widen", "1", "--batch-size", "256"]
STEPS_PER_EPOCH = 6
TIME_FIELDS = ("time", "images_per_s")


def invoke(args: list[str]):
    """Run the CLI in this process; returns click's Result (exit_code, output)."""
    return CliRunner().invoke(run_cli, args, catch_exceptions=False)


def train(out: Path, resume: bool = False, **options):
    """Train the tiny preset variant with `options` into `out`; returns the RunOutcome."""
    config = build_config("quick", {**TINY, **options})
    run_dir = prepare_run_dir(out, resume=resume, overwrite=False)
    return Training(config, echo=lambda line: None).run(run_dir, resume=resume)


def resume(out: Path, **overrides):
    """Continue the run in `out`, lengthened by `overrides` (steps/epochs)."""
    from nets.training.config import RunConfig, resumed_config

    run_dir = prepare_run_dir(out, resume=True, overwrite=False)
    saved = RunConfig.from_dict(run_dir.read_json("config.json")["options"])
    return Training(resumed_config(saved, overrides), echo=lambda line: None).run(run_dir, resume=True)


def checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_times(records: list[dict]) -> list[dict]:
    """Records with their wall-clock fields dropped (everything else must match bitwise)."""
    return [{key: value for key, value in record.items() if key not in TIME_FIELDS} for record in records]


INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The bit pattern of a float tensor (so -0.0 != 0.0 and NaNs compare), other tensors as is."""
    return tensor.view(INT_OF_SIZE[tensor.element_size()]) if tensor.is_floating_point() else tensor


def state_differences(a: dict, b: dict) -> list[str]:
    """The tensors of two state_dicts that differ in any bit, with how many elements differ."""
    assert a.keys() == b.keys(), f"different keys: {sorted(set(a) ^ set(b))}"
    differ = []
    for name in a:
        x, y = bits(a[name]), bits(b[name])
        if x.shape != y.shape:
            differ.append(f"{name} (shapes {tuple(x.shape)} and {tuple(y.shape)})")
        elif not torch.equal(x, y):
            differ.append(f"{name} ({int((x != y).sum())}/{x.numel()} elements differ)")
    return differ
