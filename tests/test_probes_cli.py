"""tools/probe.py end to end: every subcommand prints a table and writes JSON."""
import json

import pytest
import torch
from click.testing import CliRunner

from tools.probe import cli as probe_cli


@pytest.fixture(scope="module")
def cli():
    return probe_cli


def invoke(cli, *args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_fingerprint_files_compare_across_runs(cli, tmp_path):
    a, b, report = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "report.json"
    invoke(cli, "fingerprint", "--out", a, "--device", "cpu")
    invoke(cli, "fingerprint", "--out", b, "--device", "cpu")
    output = invoke(cli, "compare", a, b, "--json", report)
    assert "device" in output and "match" in output
    result = json.loads(report.read_text())
    status = {row["entry"]: row["status"] for row in result["entries"]}
    assert result["counts"]["only in a"] == result["counts"]["only in b"] == 0
    # fixed and splitk replay their bits; emulated atomics draw a new order every call
    for entry, state in status.items():
        expected = "differ" if "atomic" in entry else "match"
        assert state == expected, (entry, state)
    record = json.loads(a.read_text())
    assert record["device"]["host"]["hostname"] and record["kernel_backend"] == "emulate"

    tampered = json.loads(b.read_text())
    name = "kernels/matmul/48x96x40/fixed(splits=1) fp32->fp32"
    tampered["entries"][name]["fingerprint"] = "0" * 64
    del tampered["entries"]["native/matmul/48x96x40/fp32"]
    b.write_text(json.dumps(tampered))
    invoke(cli, "compare", a, b, "--json", report)
    status = {row["entry"]: row["status"] for row in json.loads(report.read_text())["entries"]}
    assert status[name] == "differ" and status["native/matmul/48x96x40/fp32"] == "only in a"


def test_repeat_a_single_conv_layer(cli, tmp_path):
    out = tmp_path / "repeat.json"
    output = invoke(cli, "repeat", "--op", "conv_wgrad", "--shape", "2x8x8x8", "--mode", "splitk", "--splits", "4",
                    "--runs", "3", "--no-replay", "--device", "cpu", "--json", out)
    assert "differing" in output
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 2 and all(run["n_differ"] > 0 for run in runs)
    invoke(cli, "repeat", "--op", "conv_wgrad", "--shape", "2x8x8x8", "--mode", "splitk", "--splits", "4",
           "--device", "cpu", "--json", out)
    assert json.loads(out.read_text())["runs"][0]["n_differ"] == 0, "replayed splitk calls repeat their bits"
    bad = CliRunner().invoke(cli, ["repeat", "--op", "matmul", "--shape", "4x8"])
    assert bad.exit_code != 0 and "MxKxN" in bad.output


def test_repeat_training_finds_the_first_divergent_step(cli, tmp_path):
    out = tmp_path / "train.json"
    invoke(cli, "repeat", "--steps", "2", "--mode", "atomic", "--splits", "4", "--roles", "weight_grad",
           "--net-option", "depth=7", "--net-option", "widen=1", "--net-option", "init=he", "--device", "cpu",
           "--json", out)
    run = json.loads(out.read_text())["runs"][0]
    # the classifier's weight gradient is an atomic sum from the first step on
    assert run["first_divergent_step"] == 0 and run["tensors_differing"] > 0
    invoke(cli, "repeat", "--steps", "2", "--device", "cpu", "--json", out)
    run = json.loads(out.read_text())["runs"][0]
    assert run["first_divergent_step"] is None and run["tensors_differing"] == 0


def test_reveal_fixed_and_splitk(cli, tmp_path):
    out = tmp_path / "reveal.json"
    output = invoke(cli, "reveal", "--k", "8", "--mode", "fixed", "--splits", "2", "--backend", "emulate",
                    "--json", out)
    assert "1 distinct tree(s)" in output
    reveals = json.loads(out.read_text())["reveals"]
    assert all(r["consistent"] and r["same_as_first_run"] for r in reveals)
    assert reveals[0]["tree"].endswith("+(4..7))")
    invoke(cli, "reveal", "--k", "8", "--mode", "splitk", "--splits", "4", "--calls", "0,1,2,3", "--repeat", "1",
           "--backend", "emulate", "--json", out)
    trees = {r["tree"] for r in json.loads(out.read_text())["reveals"]}
    assert len(trees) > 1, "splitk's tree follows the call number"
    output = invoke(cli, "reveal", "--k", "8", "--target", "torch-sum", "--repeat", "1", "--device", "cpu")
    assert "yes" in output


def test_symmetry_of_a_checkpoint_and_of_a_fresh_net(cli, tmp_path):
    import nets

    model = nets.build("constnet", depth=7, widen=1, init="zero")
    checkpoint = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "step": 3}, checkpoint)
    out = tmp_path / "symmetry.json"
    invoke(cli, "symmetry", "--checkpoint", checkpoint, "--json", out)
    report = json.loads(out.read_text())
    assert report["max_forward"] == 1.0  # zero init: every filter identical (or zero)
    assert [layer["name"] for layer in report["layers"]][0] == "stem"
    output = invoke(cli, "symmetry", "--net-option", "depth=7", "--net-option", "widen=1", "--net-option", "init=he",
                    "--perturbation", "--json", out)
    assert "blocks.0.conv" in output and "mean dissimilarity" in output
    layers = {layer["name"]: layer for layer in json.loads(out.read_text())["layers"]}
    # the stem averages the input channels (identical outputs); random block convs do not
    assert layers["stem"]["perturbation_forward"] == pytest.approx(0.0, abs=1e-6)
    assert layers["blocks.0.conv"]["perturbation_forward"] > 0.5


def test_noise_audit_and_device(cli, tmp_path):
    out = tmp_path / "noise.json"
    invoke(cli, "noise", "--ops", "matmul", "--shape", "8x32x8", "--modes", "fixed,atomic", "--precisions", "fp32",
           "--splits", "4", "--device", "cpu", "--json", out)
    rows = json.loads(out.read_text())["rows"]
    assert [row["spread_frac"] == 0 for row in rows] == [True, False]
    # three or more chunks: the sum of two partials is the same in either order
    output = invoke(cli, "audit", "--mode", "atomic", "--splits", "4", "--roles", "weight_grad", "--device", "cpu",
                    "--nondeterministic-only", "--json", out)
    assert "linear fc" in output and "weight_grad" in output
    output = invoke(cli, "device", "--json", out)
    assert "host.hostname" in output and json.loads(out.read_text())["host"]["cpu_count"] >= 1
