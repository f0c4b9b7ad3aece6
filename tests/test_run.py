"""tools/run.py end to end: every file of a run directory, refusal to overwrite, one-line errors."""
from __future__ import annotations

import json
import math

import matplotlib.image
import pytest
import torch

from test_run_support import STEPS_PER_EPOCH, TINY_ARGS, invoke, jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = STEPS_PER_EPOCH + 2  # crosses one epoch end (test record, checkpoint) and ends mid-epoch


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny splitk run through the CLI, shared by the checks below."""
    out = tmp_path_factory.mktemp("runs") / "splitk"
    result = invoke([*TINY_ARGS, "--steps", str(STEPS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_config_json_holds_every_option_and_the_backends(finished_run):
    out, _ = finished_run
    config = json.loads((out / "config.json").read_text())
    options, derived = config["options"], config["derived"]
    assert options["steps"] == STEPS and options["epochs"] is None, options
    assert (options["depth"], options["widen"], options["batch_size"]) == (7, 1, 256)
    assert options["reduction"] == "splitk" and options["preset"] == "quick"
    for name in ("net", "init", "dropout", "stem_dropout", "splits", "granularity", "noise_seed", "forward",
                 "input_grad", "weight_grad", "dtype", "accumulate", "native_deterministic", "dataset",
                 "data_dir", "lr", "momentum", "weight_decay", "lr_milestones", "seed", "device"):
        assert name in options, f"option {name} missing from config.json"
    numerics = derived["numerics"]
    assert numerics["backends"] == {"forward": "emulate", "input_grad": "emulate", "weight_grad": "emulate"}
    assert numerics["policy"]["weight_grad"]["mode"] == "splitk" and numerics["policy"]["forward"]["splits"] == 8
    assert derived["steps_per_epoch"] == STEPS_PER_EPOCH and derived["total_steps"] == STEPS
    # stem, 3 block convs, 2 widening skips (16 -> 16 at stride 1 needs none), fc
    assert derived["patched_layers"] == 7, derived
    assert config["invocations"][0]["resume"] is False


def test_env_json_records_device_libraries_commit_and_settings(finished_run):
    out, _ = finished_run
    env = json.loads((out / "env.json").read_text())
    for moment in ("device_start", "device_end"):
        record = env[moment]
        assert record["host"]["cpu_count"] >= 1 and record["host"]["cpu_model"], record
        assert isinstance(record["nvidia"], bool)
    assert env["libraries"]["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    for name in ("python", "triton", "cuda", "cudnn", "driver"):
        assert name in env["libraries"], name
    assert set(env["git"]) == {"commit", "dirty"}
    for name in ("CUBLAS_WORKSPACE_CONFIG", "TRITON_INTERPRET", "OMP_NUM_THREADS"):
        assert name in env["environment"]["variables"]
    assert env["environment"]["torch_threads"] >= 1
    assert env["host"] and env["cpu_model"]


def test_metrics_jsonl_has_train_intervals_and_test_records(finished_run):
    out, _ = finished_run
    records = jsonl(out / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    test = [r for r in records if r["kind"] == "test"]
    assert [r["step"] for r in test] == [STEPS_PER_EPOCH, STEPS], test
    assert train[-1]["step"] == STEPS and sum(r["steps"] for r in train) == STEPS, train
    for record in records:
        assert math.isfinite(record["loss"]) and 0.0 <= record["acc"] <= 1.0 and record["time"] >= 0, record
    assert all(r["lr"] == 0.05 and r["images_per_s"] > 0 for r in train), train


def test_symmetry_jsonl_covers_early_steps_epoch_ends_and_every_layer(finished_run):
    out, _ = finished_run
    records = jsonl(out / "symmetry.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 4, STEPS_PER_EPOCH, STEPS], [r["step"] for r in records]
    first = records[0]
    names = [layer["name"] for layer in first["layers"]]
    assert names[0] == "stem" and names[-1] == "fc" and len(names) == 7, names
    conv_forward = [layer["forward"] for layer in first["layers"] if layer["kind"] == "conv"]
    assert all(c == 1.0 for c in conv_forward), f"zero-init ConstNet must start symmetric: {conv_forward}"
    assert first["max_forward"] == 1.0 and first["summary_layers"] == names[:-1], "every conv, not the classifier"
    for layer in records[-1]["layers"]:
        assert {"forward", "backward", "effective_width", "n_out", "n_in"} <= set(layer), layer


def test_summary_json_and_final_table(finished_run):
    out, output = finished_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["images"] > 0 and summary["images_per_s"] > 0
    assert 0.0 <= summary["final_test_acc"] <= summary["best_test_acc"] <= 1.0, summary
    assert summary["symmetry_threshold"] == 1.0 - 1e-6
    broke = summary["symmetry_broke_step"]
    assert broke is None or 1 <= broke <= STEPS
    assert summary["total_seconds"] >= summary["train_seconds"] > 0
    assert "final test accuracy" in output and "per-layer symmetry" in output and "blocks.0.conv" in output


def test_checkpoint_and_plots(finished_run):
    out, _ = finished_run
    saved = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert {"model", "optimizer", "scaler", "call_counter", "rng", "lr_schedule", "state"} <= set(saved)
    assert saved["state"]["step"] == STEPS and saved["call_counter"]["next_call"] > 0
    for name in ("curves.png", "symmetry.png"):
        path = out / "plots" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 200 and width > 300, (name, height, width)
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_existing_run_is_never_overwritten(finished_run):
    out, _ = finished_run
    before = (out / "summary.json").read_bytes()
    result = invoke([*TINY_ARGS, "--steps", "1", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "already holds a run" in result.output and "--resume" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert (out / "summary.json").read_bytes() == before


def test_overwrite_replaces_a_run(tmp_path):
    out = tmp_path / "run"
    assert invoke([*TINY_ARGS, "--steps", "1", "--reduction", "fixed", "--out", str(out)]).exit_code == 0
    result = invoke([*TINY_ARGS, "--steps", "2", "--reduction", "fixed", "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_atomic_fp16_works_as_written_and_says_it_is_emulated(tmp_path):
    result = invoke(["--reduction=atomic", "--dtype=fp16", *TINY_ARGS, "--steps", "2", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "atomic mode on CPU is emulated" in result.output
    derived = json.loads((tmp_path / "a" / "config.json").read_text())["derived"]
    assert derived["numerics"]["atomic_emulated"] is True
    assert derived["numerics"]["policy"]["forward"]["precision"] == "fp16"


NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("args, message", [
    (["--reduction", "sloppy"], "Invalid value for '--reduction'"),
    (["--init", "random"], "init='random' is not allowed"),
    (["--net", "leakynet", "--init", "1_ii"], "letters but depth=7"),
    (["--net", "leakynet", "--init", "1_ixi_iii"], "unknown letter"),
    (["--dataset", "cifar10"], "needs data_dir"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "is not a directory"),
    (["--native-deterministic"], "--native-deterministic applies to --reduction native only"),
    (["--reduction", "native", "--weight-grad", "splitk"], "--weight-grad need --reduction fixed"),
    (["--reduction", "native", "--dtype", "tf32"], "needs a CUDA GPU"),
    (["--epochs", "2", "--steps", "3"], "not both"),
    (["--splits", "0"], "--splits=0"),
    (["--lr-milestones", "E-x"], "--lr-milestones entry"),
    (["--dropout", "1.5"], "--dropout=1.5 is not allowed"),
    pytest.param(["--device", "cuda"], "needs a CUDA GPU", marks=pytest.mark.skipif(not NO_CUDA, reason="has CUDA")),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    result = invoke([*TINY_ARGS, "--steps", "1", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code != 0, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1, result.output
    assert not (tmp_path / "run" / "config.json").exists(), "a failed start must not leave a run behind"


def test_unwritable_out_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = invoke([*TINY_ARGS, "--steps", "1", "--out", str(blocker / "run")])
    assert result.exit_code == 1 and "cannot write to --out" in result.output, result.output
    assert "Traceback" not in result.output


def test_resume_needs_out():
    result = invoke(["--resume"])
    assert result.exit_code == 2 and "--resume needs --out" in result.output, result.output


def test_resume_of_a_directory_without_a_run_is_refused(tmp_path):
    result = invoke(["--resume", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "nothing to resume" in result.output, result.output
