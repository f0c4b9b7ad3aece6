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

import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn

from kernels import Conv2d, Linear, Policy, Reduction
from kernels.backends import resolve_backend
from kernels.reduction import ROLES

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
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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


def output_positions(model: nn.Module, sample_shape: tuple[int, ...]) -> dict[str, int]:
    """Output positions per example of every conv/linear layer (HO*WO of a conv), by name.

    Found by one forward pass of a zero example, in eval mode and without gradients (on the
    unpatched model: a patched one would already apply the splits this is used to fit).
    """
    positions = {}

    def record(name):
        def hook(layer, inputs, output):
            spatial = output.shape[2:] if isinstance(layer, nn.Conv2d) else output.shape[1:-1]
            positions[name] = math.prod(spatial)
        return hook

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [layer.register_forward_hook(record(name)) for name, layer in layers]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *sample_shape))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return positions


def reduction_lengths(layer: nn.Module, positions: int, batch: int) -> dict[str, int]:
    """K of each role's reduction in a conv or linear layer with `positions` outputs per example."""
    if isinstance(layer, nn.Conv2d):
        taps = math.prod(layer.kernel_size)
        lengths = {"forward": layer.in_channels * taps, "input_grad": layer.out_channels * taps}
    else:
        lengths = {"forward": layer.in_features, "input_grad": layer.out_features}
    return {**lengths, "weight_grad": batch * positions}


def fit_splits_to_layers(model: nn.Module, positions: dict[str, int], smallest_batch: int):
    """Cap each patched layer's splits at the length of each of its reductions; return the caps.

    A network mixes short and long reductions (a 1-channel stem reduces over 9 terms, a
    640-channel conv over 5760, a classifier's weight gradient over the batch, whose last one
    may be small), so --splits applies to every reduction long enough for it and a shorter one
    is cut into one chunk per term. The caps, by layer and role, are recorded in config.json.
    `positions` is output_positions of the model before it was patched.
    """
    capped = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, (Conv2d, Linear)):
            continue
        fits = {}
        for role, length in reduction_lengths(layer, positions[name], smallest_batch).items():
            if getattr(layer.policy, role).splits > length:
                fits[role] = replace(getattr(layer.policy, role), splits=length)
        if fits:
            layer.policy = replace(layer.policy, **fits)
            capped[name] = {role: reduction.splits for role, reduction in fits.items()}
    return capped


@contextmanager
def torch_switches(numerics: Numerics, device: torch.device):
    """Set torch's determinism and TF32 switches for the run; restore the previous ones after."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.use_deterministic_algorithms(numerics.deterministic_torch)
    # Deterministic mode would also fill every torch.empty with NaN (a check for reads of
    # uninitialised memory, not a part of determinism); that costs a pass over every buffer
    # the emulated reductions allocate, so it stays off.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = numerics.deterministic_torch
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = numerics.tf32
    torch.backends.cuda.matmul.allow_tf32 = numerics.tf32
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved[2:]


def autocast(numerics: Numerics, device: torch.device):
    """The autocast context of a native fp16/bf16 run (disabled otherwise)."""
    if numerics.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[numerics.autocast_dtype])
