"""How a run ended (finished, interrupted, or stopped early), and its summary.json.

A run stops early when its loss turns non-finite (from there it would only train on NaN) or when
a file of its run directory cannot be written (a full disk). Its last checkpoint is then left as
it was, and the message, and summary.json for a non-finite loss, say which step that checkpoint
holds.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import symmetry
from .rundir import CHECKPOINT, RunDir
from .state import RunState


@dataclass
class RunOutcome:
    """summary.json's content (None when interrupted), whether Ctrl-C stopped the run, and why it
    stopped early (None when it did not)."""

    summary: dict | None
    interrupted: bool
    stopped: str | None = None


def kept_checkpoint(run_dir: RunDir, checkpoint_step: int | None) -> str:
    if checkpoint_step is None:
        return f"no {CHECKPOINT} had been written yet"
    return f"{run_dir.file(CHECKPOINT)} keeps step {checkpoint_step}"


def non_finite_loss(loss: float, step: int, run_dir: RunDir, checkpoint_step: int | None) -> str:
    return (f"the loss became non-finite ({loss}) at step {step}, so training stopped there; "
            f"{kept_checkpoint(run_dir, checkpoint_step)} (summary.json records the stop)")


def write_failure(error: Exception, run_dir: RunDir, checkpoint_step: int | None) -> str:
    return (f"{error}; the run stopped and {kept_checkpoint(run_dir, checkpoint_step)}. After making room, "
            f"continue it with: python tools/run.py --resume --out {run_dir.path}")


def run_summary(state: RunState, *, run_dir: RunDir, numerics: str, steps_per_epoch: int, layers: list[str],
                stopped: str | None, checkpoint_step: int | None) -> dict:
    """summary.json: accuracy, when symmetry broke, time, and whether (and why) the run stopped early."""
    final_test = state.latest_test()
    last_symmetry = state.symmetry[-1] if state.symmetry else {}
    return {
        "run_dir": str(run_dir.path),
        "numerics": numerics,
        "steps": state.step,
        "epochs": state.step / steps_per_epoch,
        "stopped": stopped,
        "checkpoint_step": checkpoint_step,
        "final_test_acc": final_test["acc"] if final_test else None,
        "final_test_loss": final_test["loss"] if final_test else None,
        "best_test_acc": state.best_test_acc,
        "best_test_step": state.best_test_step,
        "symmetry_broke_step": state.symmetry_broke_step,
        "first_layer_broke_step": min(state.layer_broke_steps.values(), default=None),
        "layer_broke_steps": state.layer_broke_steps,
        "symmetry_threshold": symmetry.BROKEN_BELOW,
        "symmetry_layers": layers,
        "final_max_forward": last_symmetry.get("max_forward"),
        "final_mean_dissimilarity": last_symmetry.get("mean_dissimilarity"),
        "total_seconds": state.elapsed_seconds,
        "train_seconds": state.train_seconds,
        "images": state.images,
        "images_per_s": state.images / state.train_seconds if state.train_seconds > 0 else 0.0,
        "step_seconds": state.train_seconds / state.step if state.step else None,
    }
