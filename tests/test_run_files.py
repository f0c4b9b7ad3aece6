"""Run directory, atomic writes, environment records, plots, symmetry schedule and report text."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from nets.training import records, symmetry
from nets.training.plots import SYMMETRIC_FLOOR, write_plots
from nets.training.report import format_correlation
from nets.training.rundir import CHECKPOINT, CONFIG, RunDir, RunDirError, prepare_run_dir


def test_fresh_directory_is_created_with_a_plots_folder(tmp_path):
    run_dir = prepare_run_dir(tmp_path / "a" / "b", resume=False, overwrite=False)
    assert run_dir.plots.is_dir() and not run_dir.holds_run()


def test_directory_holding_a_run_is_refused_then_overwritten_only_in_its_run_files(tmp_path):
    run_dir = prepare_run_dir(tmp_path, resume=False, overwrite=False)
    run_dir.write_json(CONFIG, {"options": {}})
    (run_dir.plots / "curves.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("the user's own file")
    with pytest.raises(RunDirError, match="already holds a run"):
        prepare_run_dir(tmp_path, resume=False, overwrite=False)
    prepare_run_dir(tmp_path, resume=False, overwrite=True)
    assert not (tmp_path / CONFIG).exists() and not (run_dir.plots / "curves.png").exists()
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"


def test_resume_needs_a_checkpoint_and_excludes_overwrite(tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume"):
        prepare_run_dir(tmp_path, resume=True, overwrite=False)
    RunDir(tmp_path).write_json(CONFIG, {})
    RunDir(tmp_path).save_torch(CHECKPOINT, {"step": 1})
    assert prepare_run_dir(tmp_path, resume=True, overwrite=False).load_torch(CHECKPOINT) == {"step": 1}
    with pytest.raises(RunDirError, match="exclude each other"):
        prepare_run_dir(tmp_path, resume=True, overwrite=True)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.save_torch(CHECKPOINT, {"step": 3, "weights": torch.arange(5.0)})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full halfway")

    with pytest.raises(RuntimeError, match="disk full"):
        run_dir.save_torch(CHECKPOINT, {"step": 4, "weights": Unpicklable()})
    assert run_dir.load_torch(CHECKPOINT)["step"] == 3
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT], "the temporary file must be removed"


def test_written_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    RunDir(tmp_path).write_json(CONFIG, {"a": 1})
    assert (tmp_path / CONFIG).stat().st_mode & 0o777 == 0o666 & ~umask


def test_jsonl_rewrite_and_append(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.write_jsonl("m.jsonl", [{"step": 1}, {"step": 2}])
    run_dir.append_jsonl("m.jsonl", {"step": 3, "loss": 0.5})
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_env_record_on_a_machine_without_nvidia(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(records.probes, "device_info", lambda: {
        "host": {"hostname": "box", "cpu_model": "Some CPU", "cpu_count": 2}, "nvidia": False,
        "reason": "NVML unavailable (NVMLError_LibraryNotFound)"})
    env = records.env_record()
    assert env["device_start"]["nvidia"] is False and "NVML" in env["device_start"]["reason"]
    assert (env["host"], env["cpu_model"], env["libraries"]["driver"]) == ("box", "Some CPU", None)
    assert env["environment"]["variables"]["TRITON_INTERPRET"] == "1"
    assert env["libraries"]["torch"] and env["libraries"]["python"]


def test_real_device_record_never_fails():
    record = records.device_record()
    assert isinstance(record["nvidia"], bool) and record["host"]["cpu_count"] >= 1
    if not record["nvidia"]:
        assert record["reason"]


def test_git_record_names_the_project_commit():
    git = records.git_record()
    if git["commit"] is not None:
        assert len(git["commit"]) == 40 and isinstance(git["dirty"], bool)


def test_symmetry_record_schedule():
    due = [step for step in range(0, 41) if symmetry.record_due(step, steps_per_epoch=12, total_steps=40)]
    assert due == [0, 1, 2, 4, 8, 12, 16, 24, 32, 36, 40]


def test_broken_threshold_separates_rounding_from_real_differences(generator):
    """Identical filters give C_f = 1 up to float64 rounding; a 1e-2 relative change crosses the threshold."""
    conv = nn.Conv2d(8, 6, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(1, 8, 3, 3, generator=generator).expand(6, -1, -1, -1))
    assert max(symmetry.forward_correlations(conv).values()) >= symmetry.BROKEN_BELOW
    direction = torch.randn(8, 3, 3, generator=generator)
    with torch.no_grad():
        conv.weight[0] += 1e-2 * conv.weight[0].norm() * direction / direction.norm()
    # 1 - cos ~ 0.5e-4 for the 10 of 30 ordered pairs that involve filter 0: 1 - C_f ~ 1.7e-5.
    assert max(symmetry.forward_correlations(conv).values()) < symmetry.BROKEN_BELOW


def test_symmetry_summary_uses_convs_or_the_hidden_linears():
    names = lambda model: [name for name, _ in symmetry.summarised_layers(model)]  # noqa: E731
    assert names(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 1), nn.Linear(2, 2))) == ["0", "1"]
    assert names(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))) == ["0", "2"]


def test_plots_draw_symmetric_layers_on_the_floor(tmp_path):
    layers = lambda c: [{"name": "stem", "forward": 1.0}, {"name": "fc", "forward": c}]  # noqa: E731
    symmetry_records = [{"step": s, "layers": layers(1.0 - 10.0 ** -(12 - s))} for s in (0, 1, 2, 4)]
    metrics = [{"kind": "train", "step": 1, "loss": 2.3, "acc": 0.1},
               {"kind": "test", "step": 4, "loss": 2.2, "acc": 0.2}]
    paths = write_plots(metrics, symmetry_records, tmp_path)
    assert [p.name for p in paths] == ["curves.png", "symmetry.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert SYMMETRIC_FLOOR < 1e-16, "the floor must lie below any gap a float64 correlation can show"


def test_correlation_text():
    assert format_correlation(1.0) == "1 (exact)"
    assert format_correlation(1.0 - 3e-9) == "1 - 3.0e-09"
    assert format_correlation(0.25) == "0.2500"
    assert format_correlation(None) == "-"
