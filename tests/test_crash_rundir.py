"""Run directories after things went wrong: damaged files on --resume, aborted starts, orphaned
temporary files, a full disk during a checkpoint, and a loss that turns non-finite; and a run's
checkpoint read back by the symmetry probe.

Every failure is one line naming the file and what is wrong, nothing is written before the check,
and what the run keeps (its last good checkpoint) is said.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import nets.files
from nets.training.loop import Training
from tools import probe
from test_crash_resume import SMALL_ARGS, SMALL_RUN
from test_run_support import STEPS_PER_EPOCH, checkpoint, invoke, state_differences, train

STEPS = STEPS_PER_EPOCH + 1  # a checkpoint at the epoch end (6) and a final one (7)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run; tests copy it before damaging it."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    result = invoke([*SMALL_ARGS, "--steps", str(STEPS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def error_line(output: str) -> str:
    """The single "Error: ..." line of a failed command (and no traceback)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, output
    return lines[0]


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ---------------------------------------------------------------- damaged run directories on --resume

def _rewrite_json(name, change):
    def damage(out: Path):
        path = out / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return damage


def _replace(name, data: bytes | None):
    def damage(out: Path):
        if data is None:
            (out / name).unlink()
        else:
            (out / name).write_bytes(data)
    return damage


def _truncate_checkpoint(out: Path):
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])


def _torch_file(value):
    def damage(out: Path):
        torch.save(value, out / "checkpoint.pt")
    return damage


def _other_width(out: Path):
    saved = checkpoint(out)
    saved["model"] = {name: torch.zeros(2 * tensor.shape[0], *tensor.shape[1:]) if tensor.dim() else tensor
                      for name, tensor in saved["model"].items()}
    torch.save(saved, out / "checkpoint.pt")


def _without(key):
    def change(config):
        del config[key]
        return config
    return change


def _option(name, value):
    def change(config):
        config["options"][name] = value
        return config
    return change


DAMAGES = {
    "truncated checkpoint": (_truncate_checkpoint, "checkpoint.pt", "cannot be read"),
    "empty checkpoint": (_replace("checkpoint.pt", b""), "checkpoint.pt", "cannot be read"),
    "random checkpoint": (_replace("checkpoint.pt", os.urandom(5000)), "checkpoint.pt", "cannot be read"),
    "foreign checkpoint": (_torch_file({"weights": torch.ones(3)}), "checkpoint.pt", "not a checkpoint"),
    "checkpoint of a list": (_torch_file([1, 2]), "checkpoint.pt", "not a checkpoint"),
    "checkpoint of another width": (_other_width, "checkpoint.pt", "does not fit"),
    "config without options": (_rewrite_json("config.json", _without("options")), "config.json", "options"),
    "config option of a wrong type": (_rewrite_json("config.json", _option("lr", "fast")), "config.json", "--lr"),
    "config with an unknown option": (_rewrite_json("config.json", _option("colour", 1)), "config.json", "colour"),
    "config that is a list": (_replace("config.json", b"[1, 2]"), "config.json", "JSON object"),
    "config that is not JSON": (_replace("config.json", b"{garbage"), "config.json", "not valid JSON"),
    "missing env": (_replace("env.json", None), "env.json", "missing"),
    "env that is not JSON": (_replace("env.json", b"nope"), "env.json", "not valid JSON"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_run_directory_is_one_line_naming_the_file_and_nothing_is_written(finished, tmp_path, damage):
    apply, file_name, problem = DAMAGES[damage]
    out = copy_run(finished, tmp_path / "run")
    apply(out)
    before = snapshot(out)
    result = invoke(["--resume", "--out", str(out), "--steps", str(STEPS + 2)])
    assert result.exit_code == 1, result.output
    line = error_line(result.output)
    assert str(out / file_name) in line and problem in line, line
    assert snapshot(out) == before, "nothing may be written before the run directory has been checked"


def test_resume_before_the_first_checkpoint_starts_over_and_a_plain_rerun_points_to_it(finished, tmp_path):
    # What a run killed before its first epoch end leaves: its records, but no checkpoint.pt.
    out = copy_run(finished, tmp_path / "aborted")
    for name in ("checkpoint.pt", "summary.json"):
        (out / name).unlink()
    rerun = invoke([*SMALL_ARGS, "--steps", str(STEPS), "--out", str(out)])
    assert rerun.exit_code == 1 and "--resume" in error_line(rerun.output), rerun.output
    result = invoke(["--resume", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "starting over from step 0" in result.output, result.output
    assert not state_differences(checkpoint(finished)["model"], checkpoint(out)["model"])
    invocations = json.loads((out / "config.json").read_text())["invocations"]
    assert len(invocations) == 2, "the restart keeps the run's history of invocations"


def test_a_runs_checkpoint_is_read_back_by_the_symmetry_probe(finished):
    # It holds numpy's generator state beside the weights, which a safe (weights-only) load must admit.
    result = CliRunner().invoke(probe.cli, ["symmetry", "--checkpoint", str(finished / "checkpoint.pt")])
    assert result.exit_code == 0, result.output
    assert "hidden" in result.output


# ---------------------------------------------------------------- orphaned temporary files

@pytest.mark.parametrize("how", ["--resume", "--overwrite"])
def test_resume_and_overwrite_remove_temporaries_of_killed_writers_only(finished, tmp_path, how):
    out = copy_run(finished, tmp_path / "run")
    orphans = [out / f".checkpoint.pt.{dead_pid()}.0123abcd.tmp", out / f".config.json.{dead_pid()}.89abcdef.tmp"]
    live = out / f".metrics.jsonl.{os.getpid()}.00000000.tmp"  # this process: still writing it
    for path in [*orphans, live]:
        path.write_bytes(b"half a file")
    args = ["--resume", "--out", str(out), "--steps", str(STEPS + 1)] if how == "--resume" else \
        [*SMALL_ARGS, "--steps", "1", "--out", str(out), "--overwrite"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in orphans)
    assert live.exists(), "a temporary file of a running process is not ours to remove"


# ---------------------------------------------------------------- a full disk

class _FillingDisk:
    """A file handle on a disk that is full after `room` more bytes."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_full_disk_during_a_checkpoint_is_one_line_and_the_previous_checkpoint_survives(tmp_path, monkeypatch):
    writes = []

    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if ".checkpoint.pt." in str(path):
            writes.append(path)
            if len(writes) == 2:  # the second checkpoint (step 12) finds the disk full
                return _FillingDisk(handle, room=4096)
        return handle

    monkeypatch.setattr(nets.files, "open", open_on_a_filling_disk, raising=False)
    out = tmp_path / "run"
    result = invoke([*SMALL_ARGS, "--steps", str(2 * STEPS_PER_EPOCH + 1), "--out", str(out)])
    assert result.exit_code == 1, result.output
    line = error_line(result.output)
    assert "No space left on device" in line and str(out / "checkpoint.pt") in line, line
    assert f"step {STEPS_PER_EPOCH}" in line and "--resume" in line, line
    assert checkpoint(out)["state"]["step"] == STEPS_PER_EPOCH
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert invoke(["--resume", "--out", str(out)]).exit_code == 0


# ---------------------------------------------------------------- a loss that turns non-finite

def test_exploding_run_stops_with_a_clear_message_and_says_so_in_its_summary(tmp_path):
    out = tmp_path / "run"
    result = invoke([*SMALL_ARGS, "--lr", "1e30", "--steps", str(STEPS), "--out", str(out)])
    assert result.exit_code == 1, result.output
    line = error_line(result.output)
    assert "loss" in line and "no checkpoint" in line, line
    summary = json.loads((out / "summary.json").read_text())
    assert "non-finite" in summary["stopped"] and summary["checkpoint_step"] is None, summary
    assert summary["steps"] < STEPS
    assert not (out / "checkpoint.pt").exists()


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    step = Training._train_step

    def poisoned(self, images, labels, lr):
        if self.state.step == STEPS_PER_EPOCH + 1:  # after the checkpoint at the epoch end
            with torch.no_grad():
                next(self.model.parameters()).fill_(math.nan)
        return step(self, images, labels, lr)

    monkeypatch.setattr(Training, "_train_step", poisoned)
    outcome = train(tmp_path / "run", **SMALL_RUN, steps=2 * STEPS_PER_EPOCH)
    assert outcome.stopped and f"step {STEPS_PER_EPOCH + 2}" in outcome.stopped, outcome.stopped
    assert outcome.summary["checkpoint_step"] == STEPS_PER_EPOCH
    assert outcome.summary["steps"] == STEPS_PER_EPOCH + 1
    assert checkpoint(tmp_path / "run")["state"]["step"] == STEPS_PER_EPOCH
