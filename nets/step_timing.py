"""How fast the emulate backend trains and reduces on this machine, against torch's own kernels.

`step_times` builds the quick preset's network (ConstNet-10-1, zero init, on the bundled 8x8
digits) once per reduction, patched exactly as a run patches it, and times its training step
(forward, loss, backward, SGD) on one fixed batch, with the run's torch switches. The steps of
all reductions are timed in turn, repeat after repeat, so that a shared machine's slow spells
fall on every one alike; each gets the median of its warmed-up repeats. `step_peak_bytes` gives
the peak of torch's live CPU tensor memory during one step (torch.profiler's allocation events,
on one thread, where every block of the emulate backend runs in the profiled thread).
`speed_report` gathers these with the per-role convolution and GEMM timings of probes.timing,
each as a ratio to torch next to the goal it is held to.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from kernels import patch
from kernels.workers_emulate import release_scratch, scratch_bytes
from probes.timing import conv_cases, conv_work_shares, gemm_cases, run_cases

from .data import BatchLoader, load_dataset
from .training.config import build_config
from .training.models import build_model
from .training.numerics import numerics_from_config, torch_switches
from .training.step import make_optimizer, train_step

# name -> the run options of the reduction it times (every one on the quick preset)
STEP_REDUCTIONS = {
    "native": {"reduction": "native"},
    "fixed": {"reduction": "fixed"},
    "splitk": {"reduction": "splitk", "splits": 8},
    "atomic": {"reduction": "atomic", "splits": 8},
    "splitk32": {"reduction": "splitk", "splits": 32},
}
# Ratios to torch's own kernels (time, or peak memory against the fixed step) held as goals
GOALS = {"step": {"fixed": 1.5, "splitk": 3.0, "atomic": 3.0, "splitk32": 4.0},
         "conv": {"fixed": 2.0, "splitk": 3.0}, "gemm": {"fixed": 1.2, "splitk": 2.0}, "memory": {"splitk": 2.0}}
MODES = ("fixed", "splitk")  # of the conv roles and GEMMs timed
# --shapes -> (conv layer presets, GEMM shape names) of probes.timing that the report times
REPORT_SHAPES = {"cpu": (("quick", "cpu"), ("square-1024",)), "tiny": (("tiny",), ("square-64",))}


def training_step(options: dict, batch_size: int = 64, seed: int = 0) -> Callable[[], None]:
    """One training step of the quick preset's run with `options`, on its first batch, as a callable."""
    config = build_config("quick", {**options, "batch_size": batch_size, "seed": seed, "device": "cpu"})
    device = torch.device("cpu")
    numerics = numerics_from_config(config, device)
    torch.manual_seed(seed)
    data = load_dataset(config.dataset, seed=0)
    model = build_model(config, data.info.in_channels, data.info.image_size, data.info.num_classes)
    batch = BatchLoader(data.train, batch_size, seed=seed).batch(0, 0)
    if numerics.policy is not None:
        patch(model, numerics.policy, backend=numerics.backend, example_input=batch.images)
    optimizer = make_optimizer(model, config.lr, config.momentum, config.weight_decay)

    def step():
        with torch_switches(numerics, device):
            train_step(model, optimizer, batch.images, batch.labels)

    return step


def interleaved_medians(calls: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of each callable over `repeats` rounds that run every callable once."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def step_times(names=tuple(STEP_REDUCTIONS), batch_size: int = 64, warmup: int = 5, repeats: int = 30) -> dict:
    """{name: median seconds of a training step} for the STEP_REDUCTIONS named."""
    return interleaved_medians({name: training_step(STEP_REDUCTIONS[name], batch_size) for name in names},
                               warmup, repeats)


def step_peak_bytes(options: dict, batch_size: int = 64) -> int:
    """Peak bytes of live torch CPU tensors during one training step (after one step of warm-up),
    counting the scratch memory of the emulate backend's blocks that the warm-up step allocated."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step = training_step(options, batch_size)
        release_scratch()  # what earlier steps left is not this step's
        step()
        held = scratch_bytes()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            step()
    finally:
        torch.set_num_threads(threads)
    changes = sorted((event.start_ns(), event.nbytes()) for event in profiler.profiler.kineto_results.events()
                     if event.name() == "[memory]")
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return held + peak


def speed_report(shapes: str = "cpu", splits: int = 8, warmup: int = 5, repeats: int = 30, progress=None) -> dict:
    """The emulate backend's figures against torch: {"step", "conv", "gemm", "memory"} -> rows,
    each row with its "ratio" and the "goal" of GOALS (None where there is none); a conv row
    also with its "floor", the least ratio its own work allows here (probes.timing.conv_work_shares)."""
    device = torch.device("cpu")
    conv_presets, gemm_names = REPORT_SHAPES[shapes]
    steps = step_times(warmup=warmup, repeats=repeats)
    report = {"step": [{"reduction": name, "ms": 1e3 * seconds, "ratio": seconds / steps["native"],
                        "goal": GOALS["step"].get(name)} for name, seconds in steps.items()]}
    # one run_cases (and shares) per preset: it reuses torch's time across cases of one name, and presets share names
    cases = [("conv", preset, conv_cases(preset)) for preset in conv_presets]
    cases.append(("gemm", shapes, [case for case in gemm_cases(shapes) if case.name in gemm_names]))
    for kind, preset, kind_cases in cases:
        rows = run_cases(kind_cases, MODES, ("fp32",), "fp32", splits, "emulate", device, warmup,
                         repeats, progress or (lambda row: None))
        shares = conv_work_shares(preset, MODES, splits, warmup, repeats) if kind == "conv" else {}
        report.setdefault(kind, []).extend(
            {"case": f"{preset} {row.case}", "role": row.role, "shape": f"{row.m}x{row.n}x{row.k}", "mode": row.mode,
             "ours_ms": row.ours_ms, "torch_ms": row.torch_ms, "ratio": row.ratio,
             **({"floor": round(row.ratio * shares[row.case, row.role, row.mode], 3)} if shares else {}),
             "goal": GOALS[kind][row.mode]}
            for row in rows)
    peaks = {name: step_peak_bytes(STEP_REDUCTIONS[name]) for name in ("fixed", "splitk", "splitk32")}
    report["memory"] = [{"reduction": name, "peak_mib": peak / 2**20, "ratio": peak / peaks["fixed"],
                         "goal": GOALS["memory"].get(name)} for name, peak in peaks.items()]
    return report
