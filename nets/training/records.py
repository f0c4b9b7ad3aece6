"""The environment record of a run (env.json): machine, libraries, project commit, settings.

Library versions are read from package metadata, so recording them imports nothing (triton in
particular must not be imported before TRITON_INTERPRET is settled). The device record comes
from probes.device_info() and is taken at the start and at the end of a run, since clocks,
temperature and power change while it trains.
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

import probes

LIBRARIES = ("torch", "triton", "numpy", "click", "matplotlib", "scikit-learn", "nvidia-ml-py", "tqdm")
ENVIRONMENT_VARIABLES = (
    "CUBLAS_WORKSPACE_CONFIG",
    "TRITON_INTERPRET",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_LAUNCH_BLOCKING",
    "PYTORCH_CUDA_ALLOC_CONF",
    "NVIDIA_TF32_OVERRIDE",
)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def library_versions() -> dict:
    """Python, the installed libraries, and torch's CUDA and cuDNN builds (None where absent)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return versions


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_record() -> dict:
    """The project's commit and whether its tree has uncommitted changes (None outside a checkout)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment() -> dict:
    """The environment variables that change numerics or threading, and torch's thread counts."""
    return {
        "variables": {name: os.environ.get(name) for name in ENVIRONMENT_VARIABLES},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }


def device_record() -> dict:
    """The device record (NVML GPUs, or the CPU host without them) as it is right now."""
    return probes.device_info()


def env_record() -> dict:
    """Everything env.json holds at the start of a run (device_end is added when it ends)."""
    device = device_record()
    host = device.get("host", {})
    return {
        "host": host.get("hostname"),
        "cpu_model": host.get("cpu_model"),
        "libraries": {**library_versions(), "driver": device.get("driver_version")},
        "git": git_record(),
        "environment": environment(),
        "device_start": device,
        "device_end": None,
    }
