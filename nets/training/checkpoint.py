"""Checkpoints: everything a run needs to continue as if it had never stopped.

Saved: model and optimizer state, the gradient scaler, every random generator (torch CPU and
CUDA, Python, numpy), the kernels call counter (so splitk orders replay exactly), the learning
rate schedule, and the RunState (step, counters, metrics and symmetry so far). The data order
needs no state of its own: nets.data.BatchLoader draws each batch from (seed, epoch, step).
"""
from __future__ import annotations

import random

import numpy as np
import torch

from kernels import CallCounter

from .rundir import CHECKPOINT, RunDir
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
    saved = run_dir.load_torch(CHECKPOINT)
    if saved.get("format") != FORMAT:
        raise ValueError(f"{run_dir.file(CHECKPOINT)} has checkpoint format {saved.get('format')!r}; "
                         f"this version reads format {FORMAT}")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    counter.load_state_dict(saved["call_counter"])
    restore_rng(saved["rng"], device)
    return RunState.from_dict(saved["state"])
