"""Seeded runs repeat bit for bit; --noise-seed changes them; resumed runs equal uninterrupted ones."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from test_run_support import (ROOT, RUN_SCRIPT, STEPS_PER_EPOCH, TINY_ARGS, bits, checkpoint, jsonl, resume,
                              state_differences, train, without_times)

STEPS = 4


def run_record(out):
    """Weights, optimizer momenta, counter, and metrics/symmetry without wall-clock fields."""
    saved = checkpoint(out)
    momenta = {str(k): v["momentum_buffer"] for k, v in saved["optimizer"]["state"].items()}
    return saved["model"], momenta, saved["call_counter"], without_times(jsonl(out / "metrics.jsonl")), \
        jsonl(out / "symmetry.jsonl")


def identical_filter_layers(model_state: dict) -> dict[str, bool]:
    """For every conv weight: are all its output filters bitwise identical?"""
    return {name: bool((bits(w) == bits(w[:1])).all()) for name, w in model_state.items() if w.dim() == 4}


@pytest.mark.parametrize("reduction", ["fixed", "splitk"])
def test_identical_runs_are_bitwise_identical(tmp_path, reduction):
    for name in ("a", "b"):
        train(tmp_path / name, reduction=reduction, steps=STEPS)
    first, second = run_record(tmp_path / "a"), run_record(tmp_path / "b")
    assert not state_differences(first[0], second[0]), state_differences(first[0], second[0])
    assert not state_differences(first[1], second[1]), "optimizer momenta differ"
    assert first[2] == second[2]
    assert first[3] == second[3], "metrics differ"
    assert first[4] == second[4], "symmetry records differ"
    # The experiment's premise, through the whole pipeline: the zero-init ConstNet's filters stay
    # bitwise identical under the fixed order, while splitk noise makes some of them differ.
    symmetric = identical_filter_layers(first[0])
    if reduction == "fixed":
        assert all(symmetric.values()), f"fixed order broke {[n for n, same in symmetric.items() if not same]}"
    else:
        assert not symmetric["blocks.2.conv.weight"], symmetric


def test_noise_seed_changes_the_weights(tmp_path):
    train(tmp_path / "a", reduction="splitk", steps=STEPS, noise_seed=0)
    train(tmp_path / "b", reduction="splitk", steps=STEPS, noise_seed=1)
    differ = state_differences(checkpoint(tmp_path / "a")["model"], checkpoint(tmp_path / "b")["model"])
    # Splitk noise reaches every trained conv through its weight gradient.
    differing = {entry.split(" ")[0] for entry in differ}
    assert {"blocks.0.conv.weight", "blocks.1.conv.weight", "blocks.2.conv.weight"} <= differing, differ


def test_fixed_run_does_not_depend_on_the_noise_seed(tmp_path):
    train(tmp_path / "a", reduction="fixed", steps=STEPS, noise_seed=0)
    train(tmp_path / "b", reduction="fixed", steps=STEPS, noise_seed=7)
    assert not state_differences(checkpoint(tmp_path / "a")["model"], checkpoint(tmp_path / "b")["model"])


@pytest.mark.gpu
@pytest.mark.timeout(120)  # its first run compiles the tiny network's kernel variants
def test_a_splitk_run_on_the_gpu_repeats_and_resumes_bit_for_bit(tmp_path):
    """On CUDA, torch runs the backward on a device thread of its own: its roles must still draw
    the run's call numbers, or neither a repeat nor a resume gives the same weights."""
    train(tmp_path / "whole", reduction="splitk", steps=3, device="cuda")
    train(tmp_path / "parts", reduction="splitk", steps=2, device="cuda")
    resume(tmp_path / "parts", steps=3)
    expected, resumed = checkpoint(tmp_path / "whole"), checkpoint(tmp_path / "parts")
    assert not state_differences(expected["model"], resumed["model"]), state_differences(expected["model"],
                                                                                          resumed["model"])
    assert expected["call_counter"] == resumed["call_counter"]


@pytest.mark.parametrize("reduction", ["fixed", "splitk"])
def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path, reduction):
    # Stop mid-epoch (step 4 of 6) and continue across an epoch end, to step 8.
    whole = STEPS_PER_EPOCH + 2
    train(tmp_path / "whole", reduction=reduction, steps=whole)
    train(tmp_path / "parts", reduction=reduction, steps=STEPS)
    outcome = resume(tmp_path / "parts", steps=whole)
    assert outcome.summary["steps"] == whole
    expected, resumed = checkpoint(tmp_path / "whole"), checkpoint(tmp_path / "parts")
    differ = state_differences(expected["model"], resumed["model"])
    assert not differ, differ
    assert expected["call_counter"] == resumed["call_counter"]
    # The stopped run also evaluated and logged at its last step; every record of the
    # uninterrupted run's test evaluations and symmetry is there, equal, in the resumed run.
    test_whole = [r for r in without_times(jsonl(tmp_path / "whole" / "metrics.jsonl")) if r["kind"] == "test"]
    test_parts = [r for r in without_times(jsonl(tmp_path / "parts" / "metrics.jsonl")) if r["kind"] == "test"]
    assert [r for r in test_parts if r["step"] != STEPS] == test_whole
    symmetry_parts = {r["step"]: r for r in jsonl(tmp_path / "parts" / "symmetry.jsonl")}
    for record in jsonl(tmp_path / "whole" / "symmetry.jsonl"):
        assert symmetry_parts[record["step"]] == record, f"symmetry at step {record['step']} differs"


def _start_cli(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(RUN_SCRIPT), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_equals_uninterrupted(tmp_path):
    """SIGINT at an arbitrary step: clean exit with a resume hint; resuming reaches the same bits."""
    out = tmp_path / "interrupted"
    process = _start_cli([*TINY_ARGS, "--reduction", "splitk", "--steps", "100000", "--out", str(out)], ROOT)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("step"):  # training is under way
            process.send_signal(signal.SIGINT)
            break
    output = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=120) == 130, output
    assert "interrupted at step" in output and "--resume --out" in output, output
    assert "Traceback" not in output, output
    stopped_at = checkpoint(out)["state"]["step"]
    assert 0 < stopped_at < 100000
    assert not (out / "summary.json").exists()
    assert (out / "plots" / "symmetry.png").exists()

    target = stopped_at + 3
    resume(out, steps=target)
    train(tmp_path / "whole", reduction="splitk", steps=target)
    expected, resumed = checkpoint(tmp_path / "whole"), checkpoint(out)
    differ = state_differences(expected["model"], resumed["model"])
    assert not differ, differ
    # Nothing was logged at the interruption: the whole history matches, not only the weights.
    assert without_times(jsonl(out / "metrics.jsonl")) == without_times(jsonl(tmp_path / "whole" / "metrics.jsonl"))
    assert jsonl(out / "symmetry.jsonl") == jsonl(tmp_path / "whole" / "symmetry.jsonl")
