"""From a run's options to its arithmetic: the kernels Policy, the backend, and torch's own switches.

Every conv/linear layer runs through `kernels` under one Policy (a Reduction per role: forward,
input gradient, weight gradient), except with --reduction native, where torch's own kernels
(cuDNN/cuBLAS/CPU BLAS) run every layer unpatched: the paper's baseline.

Torch's deterministic algorithms are switched on for every run through our kernels, so that the
only reduction noise is the one the policy dials in (batch norm, pooling and the loss stay
deterministic), and for --reduction native only with --native-deterministic (the paper's
"deterministic" row).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from kernels import ROLES, Policy, Reduction, default_device, resolve_backend, threads_to_workers

from .config import RunConfig

CUBLAS_WORKSPACE = ":4096:8"
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def role_reduction(config: RunConfig, mode: str) -> Reduction:
    """The Reduction of one role: its mode, and the shared split/seed/format options."""
    return Reduction(
        mode=mode,
        splits=config.splits,
        seed=config.noise_seed,
        granularity=config.granularity,
        precision=config.dtype,
        accumulate=config.accumulate,
    )


def policy_from_config(config: RunConfig) -> Policy | None:
    """The Policy of every patched layer; None for --reduction native (nothing is patched).

    --forward/--input-grad/--weight-grad replace --reduction's mode in their role only.
    """
    if config.reduction == "native":
        return None
    return Policy(**{role: role_reduction(config, getattr(config, role) or config.reduction) for role in ROLES})


def resolve_device(name: str) -> torch.device:
    """--device auto/cpu/cuda/cuda:N as a torch.device, refusing CUDA where there is none."""
    if name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device={name} needs a CUDA GPU and this machine has none; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass(frozen=True)
class Numerics:
    """How a run computes: the policy, the backend per role, and torch's global switches."""

    policy: Policy | None
    backend: str
    deterministic_torch: bool
    tf32: bool
    autocast_dtype: str | None
    atomic_emulated: bool

    def to_dict(self) -> dict:
        return {
            "policy": None if self.policy is None else self.policy.to_dict(),
            "backends": {role: self.backend for role in ROLES},
            "deterministic_torch": self.deterministic_torch,
            "native_tf32": self.tf32,
            "native_autocast": self.autocast_dtype,
            "atomic_emulated": self.atomic_emulated,
        }

    def describe(self) -> str:
        if self.policy is None:
            switches = [f"deterministic={self.deterministic_torch}"]
            if self.autocast_dtype:
                switches.append(f"autocast {self.autocast_dtype}")
            if self.tf32:
                switches.append("tf32")
            return f"native torch kernels ({', '.join(switches)})"
        return f"{self.backend}: {self.policy.describe()}"


def numerics_from_config(config: RunConfig, device: torch.device) -> Numerics:
    """The run's Numerics on `device`, or a ValueError naming the option that cannot work there."""
    policy = policy_from_config(config)
    native = policy is None
    if native and config.dtype == "tf32" and device.type != "cuda":
        raise ValueError(
            "--dtype tf32 with --reduction native needs a CUDA GPU (CPUs have no TF32 math); "
            "use --reduction fixed/splitk/atomic to emulate TF32 operands"
        )
    atomic = not native and any(getattr(policy, role).mode == "atomic" for role in ROLES)
    backend = "native" if native else resolve_backend("auto", device)
    return Numerics(
        policy=policy,
        backend=backend,
        deterministic_torch=config.native_deterministic if native else True,
        tf32=native and config.dtype == "tf32",
        autocast_dtype=config.dtype if native and config.dtype in AUTOCAST_DTYPES else None,
        atomic_emulated=atomic and backend == "emulate",
    )


def prepare_cuda_environment(numerics: Numerics, device: torch.device) -> None:
    """Set CUBLAS_WORKSPACE_CONFIG for deterministic cuBLAS (unless the user set it).

    cuBLAS reads it when it creates its first handle, so call this before any GPU work.
    """
    if numerics.deterministic_torch and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def _deterministic_algorithms(mode: bool, warn_only: bool = False) -> None:
    """torch.use_deterministic_algorithms(mode, warn_only=warn_only) for eager torch.

    torch's function also sets the flag of torch._inductor, importing its configuration to do so:
    1.4-1.6 s of a run's start on the 2-core CPU machine, for a compiler no run uses. Until
    something else has imported it, torch's own setter of the eager flag is called alone; once
    it is imported, torch's function sets both.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor.config" in sys.modules or setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


@contextmanager
def torch_switches(numerics: Numerics, device: torch.device):
    """Set torch's determinism and TF32 switches for the run; restore the previous ones after.

    An emulated run's torch threads go to the emulate backend's workers (kernels.threads_to_workers).
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    _deterministic_algorithms(numerics.deterministic_torch)
    # Deterministic mode would also fill every torch.empty with NaN (a check for reads of
    # uninitialised memory, not a part of determinism); that costs a pass over every buffer
    # the emulated reductions allocate, so it stays off.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = numerics.deterministic_torch
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = numerics.tf32
    torch.backends.cuda.matmul.allow_tf32 = numerics.tf32
    try:
        with threads_to_workers() if numerics.backend == "emulate" else nullcontext():
            yield
    finally:
        _deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved[2:]


def autocast(numerics: Numerics, device: torch.device):
    """The autocast context of a native fp16/bf16 run (disabled otherwise)."""
    if numerics.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[numerics.autocast_dtype])
