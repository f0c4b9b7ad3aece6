"""Crash consistency: a training run killed anywhere, inside checkpoint writes too, and resumed is
bitwise the run that never stopped, and leaves no stray file behind.

Kills are SIGKILL (nothing can clean up: the resume has to cope) at a seeded random moment of a
run, or from inside torch.save after a seeded random number of bytes of a checkpoint, and SIGINT
or SIGTERM (checkpoint, exit 130, and no temporary file left). After each kill the run is continued the way a user would: with
--resume when its directory holds a config.json (it may not have reached a checkpoint yet),
started again otherwise; at the end every file is compared with an uninterrupted run.

Every run is forked from one driver process (this file run as a script) that has imported
tools/run.py and what a run imports lazily, so a run costs its training and not Python's imports.
The driver runs no torch op before forking, and all runs have OMP_NUM_THREADS=1: no thread pool
crosses a fork, and every run sums in the same order.

SYMBREAK_FUZZ_EXAMPLES=N runs N kill sequences of one to three kills each (default 4 sequences, which
kill in each of the four ways at least once).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nets.training.config import flag
from test_fuzz_settings import EXAMPLES
from test_run_support import bits, jsonl, without_times

# A small MLP on digits, 6 steps per epoch (the run directory's machinery, not the network, is under
# test). Seeded splitk noise (one order per call: the per-element orders are compiled code, loaded
# in each run) makes a resumed run depend on the restored call counter, as well as on the weights
# and generators.
SMALL_RUN = {"net": "mlp", "depth": 2, "widen": 16, "batch_size": 256, "reduction": "splitk", "splits": 4,
             "granularity": "call"}
SMALL_ARGS = [arg for name, value in SMALL_RUN.items() for arg in (flag(name), str(value))]
# Checkpoints at steps 6 and 12 and at the end (13).
RUN_ARGS = [*SMALL_ARGS, "--steps", "13"]
ROOT = Path(__file__).resolve().parents[1]
SEQUENCES = EXAMPLES or 4
KINDS = ("write", "time", "sigint", "sigterm")
SEED = 20261123
# How a killed run may end: killed, or finished before the kill; SIGINT/SIGTERM: checkpoint and
# exit 130, or when they land before training has started, "Aborted!" (exit 1) / the default action.
EXPECTED_EXITS = {"write": (0, -signal.SIGKILL), "time": (0, -signal.SIGKILL), "sigint": (0, 1, 130),
                  "sigterm": (0, 130, -signal.SIGTERM)}
SIGNALS = {"time": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
# Wall-clock fields of checkpoints and records; everything else must match bit for bit.
TIMES = {"time", "images_per_s", "seconds", "train_seconds", "elapsed_seconds", "total_seconds",
         "step_seconds", "run_dir"}


# ---------------------------------------------------------------- the driver (a separate process)

class _DieAfter:
    """A file handle that SIGKILLs its own process once `budget` bytes have been written through it."""

    def __init__(self, handle, budget: int):
        self.handle, self.budget = handle, budget

    def write(self, data) -> int:
        if len(data) >= self.budget:
            self.handle.write(bytes(data[:self.budget]))
            self.handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self.budget -= len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _die_inside_save(index: int, budget: int) -> None:
    """Make this process's `index`-th torch.save die after `budget` bytes."""
    real_save, calls = torch.save, iter(range(1 << 30))

    def save(obj, f, *args, **kwargs):
        if next(calls) == index:
            f = _DieAfter(f, budget)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


def _fork_run(run_main, argv: list[str], log: Path, kill: list | None) -> int:
    """Start one run of tools/run.py in a forked child; its output goes to `log`."""
    pid = os.fork()
    if pid:
        return pid
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if kill and kill[0] == "write":
            _die_inside_save(kill[1], kill[2])
        run_main(argv, standalone_mode=True)
    except SystemExit as exit_:
        sys.stdout.flush()
        os._exit(exit_.code if isinstance(exit_.code, int) else 1)
    except BaseException:  # a traceback is a failure the test reports from the log
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        os._exit(99)
    os._exit(0)


def _wait(pid: int, kill: list | None) -> int:
    """Deliver a timed kill if asked, wait, and return the exit code (-N for signal N)."""
    if kill and kill[0] in SIGNALS:
        deadline = time.monotonic() + kill[1]
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(pid, SIGNALS[kill[0]])
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _continue_argv(out: Path) -> list[str]:
    """How a user carries on after a crash: resume what has a config.json, start the rest again."""
    if (out / "config.json").is_file():
        return ["--resume", "--out", str(out)]
    return [*RUN_ARGS, "--out", str(out)]


def drive(work: Path, sequences: int, seed: int) -> dict:
    """The uninterrupted run, then each kill sequence continued to the end; returns what happened."""
    import io

    import matplotlib.pyplot as plt  # what a run loads on first use: load it once here
    import torch._dynamo  # noqa: F401

    figure = plt.figure()
    figure.text(0.5, 0.5, "fonts")
    figure.savefig(io.BytesIO(), format="png")
    plt.close(figure)

    from tools.run import main as run_main

    started = time.monotonic()
    reference = work / "reference"
    code = _wait(_fork_run(run_main, [*RUN_ARGS, "--out", str(reference)], work / "reference.log", None), None)
    seconds = time.monotonic() - started
    checkpoint_bytes = (reference / "checkpoint.pt").stat().st_size if code == 0 else 0
    rng = random.Random(seed)
    log = {"reference": code, "reference_seconds": seconds, "sequences": []}
    for number in range(sequences):
        out = work / f"killed-{number}"
        kinds = [KINDS[(number + k) % len(KINDS)] for k in range(1 + number % 3)]
        kills = [_random_kill(rng, kind, seconds, checkpoint_bytes) for kind in kinds]
        attempts = []
        for kill in [*kills, None]:
            argv = _continue_argv(out) if attempts else [*RUN_ARGS, "--out", str(out)]
            begun = time.monotonic()
            code = _wait(_fork_run(run_main, argv, work / f"killed-{number}.log", kill), kill)
            attempts.append({"argv": argv, "kill": kill, "exit": code, "seconds": time.monotonic() - begun,
                             "temporaries": _temporaries(out)})
        log["sequences"].append({"out": str(out), "attempts": attempts})
    return log


def _temporaries(out: Path) -> list[str]:
    return sorted(path.name for path in out.glob(".*.tmp"))


def _random_kill(rng: random.Random, kind: str, seconds: float, checkpoint_bytes: int) -> list:
    """A kill inside one of the (three) checkpoint writes, or a signal at a random moment of a run."""
    if kind == "write":
        return ["write", rng.randrange(3), rng.randrange(1, max(2, checkpoint_bytes))]
    return [kind, rng.uniform(0.0, seconds)]


# ---------------------------------------------------------------- the test

def _comparable(value, path: str = ""):
    """`value` with its wall-clock fields dropped and tensors/arrays as bit patterns (for ==)."""
    if isinstance(value, dict):
        return {key: _comparable(item, f"{path}.{key}") for key, item in value.items() if key not in TIMES}
    if isinstance(value, (list, tuple)):
        return [_comparable(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), tuple(value.shape), bits(value).flatten().tolist())
    if isinstance(value, np.ndarray):
        return (str(value.dtype), value.shape, value.tobytes())
    return value


def _differences(expected, actual, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return [f"{path}: keys {sorted(set(expected) ^ set(actual))} differ"]
        return [d for key in expected for d in _differences(expected[key], actual[key], f"{path}.{key}")]
    return [] if expected == actual else [f"{path} differs"]


def _files(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def _run_record(out: Path) -> dict:
    """Everything of a finished run directory that must not depend on where it was killed."""
    config = json.loads((out / "config.json").read_text())
    return {
        "files": _files(out),
        "checkpoint": _comparable(torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)),
        "metrics": without_times(jsonl(out / "metrics.jsonl")),
        "symmetry": jsonl(out / "symmetry.jsonl"),
        "summary": _comparable(json.loads((out / "summary.json").read_text())),
        "config": {"options": config["options"], "derived": config["derived"]},
    }


@pytest.mark.slow
def test_killed_and_resumed_runs_equal_the_uninterrupted_run(tmp_path):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    driver = subprocess.run([sys.executable, __file__, str(tmp_path), str(SEQUENCES), str(SEED)], env=env,
                            capture_output=True, text=True, timeout=850)
    assert driver.returncode == 0, driver.stdout + driver.stderr
    log = json.loads(driver.stdout.splitlines()[-1])
    reference_log = (tmp_path / "reference.log").read_text()
    assert log["reference"] == 0, reference_log
    expected = _run_record(tmp_path / "reference")
    for sequence in log["sequences"]:
        out = Path(sequence["out"])
        story = json.dumps(sequence["attempts"], indent=1) + "\n" + Path(f"{out}.log").read_text()
        assert "Traceback" not in story, story
        assert sequence["attempts"][-1]["exit"] == 0, story
        for attempt in sequence["attempts"][:-1]:
            assert attempt["exit"] in EXPECTED_EXITS[attempt["kill"][0]], story
            if attempt["exit"] == 130:
                assert not attempt["temporaries"], story
        assert not [name for name in _files(out) if name.endswith(".tmp")], story
        differences = _differences(expected, _run_record(out))
        assert not differences, "\n".join(differences) + "\n" + story


if __name__ == "__main__":
    print(json.dumps(drive(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
