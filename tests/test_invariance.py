"""probes.invariance: whether a row of an output changes with the rest of its batch."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import kernels
from probes.invariance import OPS, batch_invariance, make_op
from tools.probe import cli as probe_cli


def check(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["check"] == name)


def test_a_rowwise_function_is_invariant_and_deterministic(generator):
    result = batch_invariance(lambda x: x * 3 - 1, torch.randn(6, 5, generator=generator))
    assert result["deterministic"] and result["invariant"]
    assert [c["check"] for c in result["checks"]] == ["repeat", "other rows", "batch 1", "batch 3", "batch 12"]
    assert result["rows"] == [0, 3, 5]
    assert check(result, "batch 1")["rows_checked"] == 1


def test_batch_statistics_make_a_model_batch_variant_and_the_first_such_layer_is_named(generator):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3)).train()
    result = batch_invariance(model, torch.randn(8, 4, generator=generator), sizes=[4, 16])
    assert result["deterministic"] and not result["invariant"]
    other = check(result, "other rows")
    assert other["rows_differ"] == other["rows_checked"] == 3
    assert other["max_ulp"] > 0
    assert other["first_layer"] == "2"


def test_run_to_run_noise_shows_as_not_deterministic(generator):
    noisy = batch_invariance(lambda x: x + torch.rand(x.shape), torch.randn(4, 3, generator=generator))
    assert not noisy["deterministic"]


def test_token_ids_and_explicit_rows_and_sizes(generator):
    table = torch.randn(10, 4, generator=generator)
    result = batch_invariance(lambda ids: table[ids].sum(1), torch.randint(0, 10, (5, 7), generator=generator),
                              rows=[1], sizes=[2, 9])
    assert result["invariant"] and [c["check"] for c in result["checks"]][2:] == ["batch 2", "batch 9"]


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_op_under_the_fixed_mode_is_deterministic(op):
    fn, x = make_op(op, 4)
    result = batch_invariance(fn, x, context=lambda: kernels.policy_mode(kernels.Reduction("fixed", splits=2)))
    assert result["deterministic"], result


def test_attention_under_the_fixed_mode_is_batch_invariant_by_construction():
    """The mode runs a bmm as one GEMM per batch entry: an entry's bits cannot see the others."""
    fn, x = make_op("attention", 5)
    result = batch_invariance(fn, x, context=lambda: kernels.policy_mode(kernels.Reduction("fixed", splits=3)))
    assert result["invariant"], result


def test_bad_arguments_are_named(generator):
    x = torch.randn(3, 2, generator=generator)
    with pytest.raises(ValueError, match="rows"):
        batch_invariance(lambda t: t, x, rows=[3])
    with pytest.raises(ValueError, match="sizes"):
        batch_invariance(lambda t: t, x, sizes=[0])
    with pytest.raises(ValueError, match="batch dimension"):
        batch_invariance(lambda t: t, torch.tensor(1.0))
    with pytest.raises(ValueError, match="op="):
        make_op("einsum", 2)


def test_probe_command_measures_ops_and_a_net_natively_and_under_the_mode(tmp_path):
    out = tmp_path / "invariance.json"
    result = CliRunner().invoke(probe_cli, [
        "invariance", "--ops", "conv2d", "--net", "transformer", "--net-option", "depth=1", "--net-option",
        "width=8", "--batch", "3", "--modes", "native,fixed", "--sizes", "1,5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "transformer (eval)" in result.output and "batch 5" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert {(row["target"], row["context"]) for row in rows} == {
        (target, mode) for target in ("conv2d", "transformer (eval)") for mode in ("native", "fixed")}
    assert all(row["rows_differ"] == 0 for row in rows if row["check"] == "repeat")
