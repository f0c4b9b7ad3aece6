"""Timing the reduction-order kernels against torch's own, in the same process.

For every case (a GEMM shape, or a conv layer x role) x mode x precision: the median time of
our kernel and of torch (torch.matmul / torch.nn.functional.conv2d and its autograd, with TF32
allowed only for precision tf32), TFLOP/s of both and their time ratio (ours / torch). On a GPU
times come from triton.testing.do_bench; on a CPU from repeated perf_counter runs after warm-up.
Ours and torch's are timed apart: on the CPU, timed in turn, each would slow the other (torch's
OpenMP threads spin for a while after each of its calls, on the cores the emulate backend's
workers use, and fall asleep during ours, to be woken by torch's next call): the emulated fixed
1024^3 GEMM took 1.41-1.49x torch's in turn and 0.93-1.30x apart, 2026-12-01.

Shape presets (GEMM: M x N x K, a (M, K) @ b (K, N)):
  gpu    4096^3; ConstNet weight gradients 160x1440 K=131072, 320x2880 K=32768, 640x5760
         K=8192 (C_out x C_in*9, K = batch 128 x H x W); the ConstNet stage-1 forward as
         kernels.conv lays it out, M = C_out 160, N = 128*32*32 pixels, K = 160*9
  cpu    1024^3 and the same layers at batch 8 (K and the pixel count divided by 16)
  quick  the quick preset's ConstNet-10-1 on 8x8 digits at batch 64
  tiny   a few small shapes, for tests
Conv presets use the ConstNet stage convolutions (3x3, pad 1) at the same batch sizes.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

import kernels
from kernels import ROLES, CallCounter, Policy, Reduction, conv_emulate, counting
from kernels.workers_emulate import ieee_fp32, one_thread
INPUT_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

GEMM_SHAPES = {  # name -> (M, N, K)
    "gpu": {
        "square-4096": (4096, 4096, 4096),
        "wgrad-160": (160, 1440, 131072),
        "wgrad-320": (320, 2880, 32768),
        "wgrad-640": (640, 5760, 8192),
        "fwd-160": (160, 131072, 1440),
    },
    "cpu": {
        "square-1024": (1024, 1024, 1024),
        "wgrad-160": (160, 1440, 8192),
        "wgrad-320": (320, 2880, 2048),
        "wgrad-640": (640, 5760, 512),
        "fwd-160": (160, 8192, 1440),
    },
    "tiny": {"square-64": (64, 64, 64), "wgrad-16": (16, 144, 512)},
    # the quick preset's ConstNet-10-1 on 8x8 digits at batch 64 (the CPU experiments' net)
    "quick": {"fwd-16": (16, 4096, 144), "wgrad-16": (16, 144, 4096), "wgrad-64": (64, 576, 256)},
}
CONV_LAYERS = {  # name -> (batch, channels, height = width); every layer is 3x3, stride 1, pad 1
    "gpu": {"stage1": (128, 160, 32), "stage2": (128, 320, 16), "stage3": (128, 640, 8)},
    "cpu": {"stage1": (8, 160, 32), "stage2": (8, 320, 16), "stage3": (8, 640, 8)},
    "tiny": {"stage1": (2, 8, 8)},
    "quick": {"stage1": (64, 16, 8), "stage2": (64, 32, 4), "stage3": (64, 64, 2)},
}


@dataclass(frozen=True)
class Case:
    """One timed problem: builds (ours, reference) callables for a reduction on a device."""

    kind: str
    name: str
    role: str
    m: int
    n: int
    k: int
    build: Callable  # (reduction, dtype, backend, device, generator) -> (ours, reference)

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k


@dataclass
class Row:
    kind: str
    case: str
    role: str
    m: int
    n: int
    k: int
    mode: str
    splits: int
    precision: str
    accumulate: str
    backend: str
    ours_ms: float
    torch_ms: float
    ours_tflops: float
    torch_tflops: float
    ratio: float


# ----------------------------------------------------------------------------- cases


def _build_gemm(m, n, k):
    def build(reduction, dtype, backend, device, generator):
        a = torch.randn(m, k, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(k, n, generator=generator).to(device=device, dtype=dtype)
        return (lambda: kernels.matmul(a, b, reduction, backend=backend)), (lambda: torch.matmul(a, b))

    return build


def gemm_cases(preset: str) -> list[Case]:
    return [
        Case("gemm", name, "forward", m, n, k, _build_gemm(m, n, k))
        for name, (m, n, k) in GEMM_SHAPES[preset].items()
    ]


def _conv_role(conv, x, w, grad, role: str):
    """A callable running one role of a conv layer: its forward, or one gradient of its backward."""
    if role == "forward":
        return lambda: conv(x, w)
    wrt = x if role == "input_grad" else w
    wrt.requires_grad_(True)
    out = conv(x, w)
    return lambda: torch.autograd.grad(out, wrt, grad, retain_graph=True)


def _conv_operands(batch, channels, size, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input, weights, output gradient) of a ConstNet stage convolution (3x3, pad 1), in fp32 on the CPU."""
    x = torch.randn(batch, channels, size, size, generator=generator)
    w = torch.randn(channels, channels, 3, 3, generator=generator) / (3 * channels**0.5)
    grad = torch.randn(batch, channels, size, size, generator=generator)
    return x, w, grad


def _our_conv(reduction: Reduction, role: str, backend: str) -> Callable:
    """kernels.conv2d of a ConstNet stage layer, with `reduction` for `role` and the fixed order for the others."""
    policy = Policy(**{r: reduction if r == role else Reduction() for r in ROLES})
    return lambda x, w: kernels.conv2d(x, w, padding=1, policy=policy, backend=backend)


def _torch_conv(x, w):
    """torch's own convolution of a ConstNet stage layer, the reference the conv cases are timed against."""
    return torch.nn.functional.conv2d(x, w, padding=1)


def _build_conv(batch, channels, size, role):
    def build(reduction, dtype, backend, device, generator):
        x, w, grad = (t.to(device=device, dtype=dtype) for t in _conv_operands(batch, channels, size, generator))
        return (
            _conv_role(_our_conv(reduction, role, backend), x.clone(), w.clone(), grad, role),
            _conv_role(_torch_conv, x.clone(), w.clone(), grad, role),
        )

    return build


def conv_cases(preset: str) -> list[Case]:
    """ConstNet's stage convolutions, each role as the GEMM it is (m, n, K as kernels.conv lays them out)."""
    cases = []
    for name, (batch, channels, size) in CONV_LAYERS[preset].items():
        pixels, taps = batch * size * size, channels * 9
        dims = {"forward": (channels, pixels, taps), "input_grad": (channels, pixels, taps),
                "weight_grad": (channels, taps, pixels)}
        for role in ROLES:
            cases.append(Case("conv", name, role, *dims[role], _build_conv(batch, channels, size, role)))
    return cases


# ----------------------------------------------------------------------------- timing


def median_ms(fn: Callable, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of fn() in milliseconds, after warm-up (do_bench on CUDA)."""
    if device.type == "cuda":
        import triton.testing

        fn()
        return float(triton.testing.do_bench(fn, warmup=25 * warmup, rep=25 * repeats, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


class allow_tf32:
    """Let torch's reference use TF32 exactly when the precision under test is tf32."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.enabled

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def reduction_for(mode: str, splits: int, precision: str, accumulate: str) -> Reduction:
    return Reduction(mode=mode, splits=1 if mode == "fixed" else splits, precision=precision, accumulate=accumulate)


def conv_work_shares(preset: str, modes, splits: int, warmup: int, repeats: int) -> dict[tuple[str, str, str], float]:
    """{(layer, role, mode): share} for each conv role of CONV_LAYERS[preset] on the emulate
    backend here in fp32: the least part of its call's time that its own work
    (kernels.conv_emulate.role_work) could take, spread perfectly over the workers that torch's
    threads give, with no Python, hand-off or contention around it (_work_share). The call's ratio
    to torch times the share is the least ratio the role could reach: above a goal, the role
    cannot meet it on this machine, whatever its calls cost."""
    generator, shares = torch.Generator().manual_seed(0), {}
    for name, (batch, channels, size) in CONV_LAYERS[preset].items():
        x, w, grad = _conv_operands(batch, channels, size, generator)
        for role in ROLES:
            for mode in modes:
                reduction = reduction_for(mode, splits, "fp32", "fp32")
                with counting(CallCounter()):
                    call = _conv_role(_our_conv(reduction, role, "emulate"), x.clone(), w.clone(), grad, role)
                    work = conv_emulate.role_work(role, x, w, grad, (1, 1), (1, 1), reduction)
                    shares[(name, role, mode)] = _work_share(work, call, warmup, repeats)
    return shares


def _work_share(work: conv_emulate.RoleWork, call: Callable, warmup: int, repeats: int) -> float:
    """The longest block of `work`, or all its blocks and its finishing step over torch's thread
    count, whichever is more, as a part of call()'s time: each part timed alone on one thread (as
    workers run them) in turn with the call, medians."""
    parts = [*work.blocks, work.finish]  # the blocks, then the finish that reads them
    times: list[list[float]] = [[] for _ in range(len(parts) + 1)]  # and the call's
    for repeat in range(warmup + repeats):
        durations = []
        with one_thread(), ieee_fp32():
            for part in parts:
                start = time.perf_counter()
                part()
                durations.append(time.perf_counter() - start)
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
        if repeat >= warmup:
            for seconds, duration in zip(times, durations):
                seconds.append(duration)
    *blocks, finish, whole = [statistics.median(seconds) for seconds in times]
    return max(max(blocks, default=0.0), (sum(blocks) + finish) / torch.get_num_threads()) / whole


def run_cases(cases, modes, precisions, accumulate, splits, backend, device, warmup, repeats, progress) -> list[Row]:
    rows = []
    reference_ms: dict[tuple, float] = {}
    generator = torch.Generator().manual_seed(0)
    for case in cases:
        for precision in precisions:
            for mode in modes:
                reduction = reduction_for(mode, splits, precision, accumulate)
                with allow_tf32(precision == "tf32"), counting(CallCounter()):
                    ours, reference = case.build(reduction, INPUT_DTYPES[precision], backend, device, generator)
                    ours_ms = median_ms(ours, device, warmup, repeats)
                    key = (case.kind, case.name, case.role, precision)
                    if key not in reference_ms:
                        reference_ms[key] = median_ms(reference, device, warmup, repeats)
                torch_ms = reference_ms[key]
                rows.append(Row(
                    case.kind, case.name, case.role, case.m, case.n, case.k, mode, reduction.splits, precision,
                    accumulate, backend, round(ours_ms, 4), round(torch_ms, 4),
                    round(case.flops / ours_ms / 1e9, 6), round(case.flops / torch_ms / 1e9, 6),
                    round(ours_ms / torch_ms, 3),
                ))
                progress(rows[-1])
    return rows
