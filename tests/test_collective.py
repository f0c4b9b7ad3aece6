"""The collective probe: fresh gloo process groups, sums compared bit for bit, the command line."""
import json

import pytest
from click.testing import CliRunner

from probes.collective import collective_probe, int_list, rank_inputs, rank_order_sum
from tools.probe import cli


def test_rank_order_sum_adds_the_ranks_left_to_right():
    expected = (rank_inputs(0, 50, "bf16", 3) + rank_inputs(1, 50, "bf16", 3)) + rank_inputs(2, 50, "bf16", 3)
    assert rank_order_sum(3, 50, "bf16", 3).equal(expected)
    assert not rank_inputs(0, 50, "fp32", 3).equal(rank_inputs(0, 50, "fp32", 4)), "the seed should matter"


@pytest.mark.slow
def test_probe_command_compares_fresh_process_groups(tmp_path):
    out = tmp_path / "collective.json"
    result = CliRunner().invoke(cli, ["collective", "--backend", "gloo", "--world-sizes", "2,3", "--sizes", "300,4000",
                                      "--dtypes", "fp32,bf16", "--runs", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "vs rank order" in result.output and "(no NVIDIA GPU)" in result.output
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert len(rows) == 2 * 2 * 2 * 2  # world sizes x ops x dtypes x sizes
    assert [len(launches) for launches in record["rank_devices"].values()] == [2, 2]
    assert {rank["device"] for launches in record["rank_devices"].values() for ranks in launches
            for rank in ranks} == {"cpu"}
    for row in rows:
        assert row["runs"] is not None and row["first_variant"] is None
        if row["op"] == "all_reduce":
            assert row["ranks_agree"] is True
        if row["world_size"] == 2:  # a + b == b + a: any order of two ranks gives the rank-order bits
            assert row["rank_order"]["identical"], row


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "mpi"}, "backend='mpi' is not allowed"),
    ({"world_sizes": (1,)}, "each must be >= 2"),
    ({"sizes": (2,), "world_sizes": (3,)}, "each must be >= the largest world size"),
    ({"dtypes": ("int8",)}, "dtypes ['int8'] are not allowed"),
    ({"runs": 1}, "runs=1 is not allowed with one variant"),
])
def test_bad_settings_are_refused_before_launching(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        collective_probe(**{"backend": "gloo", **kwargs})


def test_nccl_needs_gpus(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ValueError, match="backend='nccl' needs CUDA GPUs"):
        collective_probe("nccl")


def test_integer_lists_are_checked():
    assert int_list("2, 3,4", "--world-sizes") == [2, 3, 4]
    for text in ("", "2,x", "0"):
        with pytest.raises(ValueError, match="give comma-separated positive integers"):
            int_list(text, "--sizes")
