"""tools/bench.py step on small cases: the emulate backend's figures against torch, with their goals."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from nets.step_timing import GOALS, STEP_REDUCTIONS
from tools.bench import cli


@pytest.mark.slow
def test_step_bench_prints_every_figure_and_writes_json(tmp_path):
    json_path = tmp_path / "step.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy test machine slows torch's thread pool down most
    try:
        result = CliRunner().invoke(cli, ["step", "--shapes", "tiny", "--warmup", "1", "--repeats", "1",
                                          "--json", str(json_path)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output[-3000:]
    for header in ("training step", "conv layer", "floor", "GEMM", "step peak"):
        assert header in result.stdout
    payload = json.loads(json_path.read_text())
    assert payload["kind"] == "step" and "CPU" in payload["device"] and payload["device_record"]["host"]
    assert [row["reduction"] for row in payload["step"]] == list(STEP_REDUCTIONS)
    assert payload["step"][0]["ratio"] == 1.0, "ratios are to the native step"
    assert {(row["role"], row["mode"]) for row in payload["conv"]} == {
        (role, mode) for role in ("forward", "input_grad", "weight_grad") for mode in ("fixed", "splitk")}
    assert all(row["goal"] == GOALS["conv"][row["mode"]] and row["ratio"] > 0 for row in payload["conv"])
    assert all(row["floor"] > 0 for row in payload["conv"]) and not any("floor" in row for row in payload["gemm"])
    assert {row["mode"] for row in payload["gemm"]} == {"fixed", "splitk"}
    memory = {row["reduction"]: row for row in payload["memory"]}
    assert memory["fixed"]["ratio"] == 1.0 and memory["splitk"]["peak_mib"] > 0


def test_step_bench_refuses_shapes_and_devices_it_does_not_time():
    for args, hint in ((["--shapes", "gpu"], "--shapes"), (["--device", "cuda"], "--device")):
        result = CliRunner().invoke(cli, ["step", *args])
        assert result.exit_code == 2 and hint in result.output and "Traceback" not in result.output, result.output
