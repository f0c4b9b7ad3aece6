"""tools/run.py --intercept dispatch or function: the same bits as --intercept patch, and a record of what it controlled."""
from __future__ import annotations

import json

import pytest

from test_run_support import TINY_ARGS, checkpoint, invoke, jsonl, state_differences, train, without_times


# --intercept -> the ops its report names on the paper's networks (a classifier with bias, convolutions)
REPORTED_OPS = {"dispatch": ("addmm", "convolution"), "function": ("conv2d", "linear")}


@pytest.mark.parametrize("intercept", sorted(REPORTED_OPS))
@pytest.mark.parametrize("net", ["constnet", "leakynet"])
def test_a_mode_trains_the_papers_networks_to_the_same_bits_as_patch(tmp_path, net, intercept):
    for how in ("patch", intercept):
        train(tmp_path / how, net=net, reduction="splitk", splits=5, steps=2, batch_size=64, intercept=how)
    patched, caught = checkpoint(tmp_path / "patch"), checkpoint(tmp_path / intercept)
    assert not state_differences(patched["model"], caught["model"])
    assert patched["call_counter"] == caught["call_counter"]
    assert without_times(jsonl(tmp_path / "patch" / "metrics.jsonl")) == \
        without_times(jsonl(tmp_path / intercept / "metrics.jsonl"))
    record = json.loads((tmp_path / intercept / "summary.json").read_text())[intercept]
    assert record["share"] == 1.0
    assert {(row["op"], row["role"]) for row in record["rows"]} == {
        (op, role) for op in REPORTED_OPS[intercept] for role in ("forward", "input_grad", "weight_grad")}


def test_the_transformer_trains_under_the_mode_with_every_matmul_controlled(tmp_path):
    result = invoke([*TINY_ARGS, "--net", "transformer", "--depth", "1", "--widen", "16", "--reduction", "fixed",
                     "--splits", "2", "--steps", "2", "--intercept", "dispatch", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "summary.json").read_text())["dispatch"]
    assert record["share"] == 1.0
    assert {row["op"] for row in record["rows"]} >= {"addmm", "bmm"}
    assert "controlled" in result.output


@pytest.mark.parametrize("intercept", sorted(REPORTED_OPS))
def test_a_mode_needs_a_policy(tmp_path, intercept):
    result = invoke([*TINY_ARGS, "--reduction", "native", "--intercept", intercept, "--steps", "1",
                     "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert f"--intercept {intercept} needs --reduction fixed, splitk or atomic" in result.output
