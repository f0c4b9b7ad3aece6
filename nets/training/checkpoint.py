"""Checkpoints: everything a run needs to continue as if it had never stopped.

Saved: model and optimizer state, the gradient scaler, every random generator (torch CPU and
CUDA, Python, numpy), the kernels call counter (so splitk orders replay exactly), the learning
rate schedule, and the RunState (step, counters, metrics and symmetry so far). The data order
needs no state of its own: nets.data.BatchLoader draws each batch from (seed, epoch, step).
A checkpoint that cannot be read, is not one, or does not fit the run is a RunDirError naming it.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from kernels import CallCounter

from .rundir import CHECKPOINT, RunDir, RunDirError
from .state import RunState

FORMAT = 1


def capture_rng(device: torch.device) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def restore_rng(saved: dict, device: torch.device) -> None:
    torch.set_rng_state(saved["torch"])
    if device.type == "cuda" and saved["cuda"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda"])
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])


def save_checkpoint(run_dir: RunDir, *, model, optimizer, scaler, counter: CallCounter, schedule: dict,
                    state: RunState, device: torch.device) -> None:
    """Write checkpoint.pt atomically (a crash mid-write leaves the previous checkpoint intact)."""
    run_dir.save_torch(CHECKPOINT, {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "call_counter": counter.state_dict(),
        "lr_schedule": schedule,
        "rng": capture_rng(device),
        "state": state.to_dict(),
    })


def load_checkpoint(run_dir: RunDir, *, model, optimizer, scaler, counter: CallCounter,
                    device: torch.device) -> RunState:
    """Restore a checkpoint into freshly built objects; returns the run's state."""
    path = run_dir.file(CHECKPOINT)
    try:
        saved = run_dir.load_torch(CHECKPOINT)
    except Exception as error:  # torch.load fails in many ways on a damaged file
        raise RunDirError(f"{path} cannot be read: it is truncated or damaged ({_one_line(error)})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        found = f"format {saved.get('format')!r}" if isinstance(saved, dict) else f"a {type(saved).__name__}"
        raise RunDirError(f"{path} is not a checkpoint this version reads ({found}; expected format {FORMAT})")
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        counter.load_state_dict(saved["call_counter"])
        restore_rng(saved["rng"], device)
        return RunState.from_dict(saved["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise RunDirError(f"{path} does not fit this run (its options are in config.json): "
                          f"{_one_line(error)}") from None


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + " ..."
