"""Time the reduction-order kernels against torch's own, in the same process.

    python tools/bench.py                         # GEMM, default shapes for this machine
    python tools/bench.py gemm --shapes gpu --precisions fp16,bf16 --json gemm.json
    python tools/bench.py conv --shapes cpu       # ConstNet conv layers: forward, dgrad, wgrad
    python tools/bench.py allreduce               # DDP steps: fixed/splitk all-reduce vs native
    python tools/bench.py step --repeats 30       # CPU: training steps, conv roles, GEMM, memory vs goals

The table gives, per case x mode x precision, the median time of our kernel and of torch, TFLOP/s
of both and their ratio (probes.timing says how each is measured and what the shape presets
are). On a CPU the backend is `emulate` unless --backend says otherwise. --json FILE writes the
rows with a record of the device.
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tools/NAME.py`: import from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import click
import torch

import nets
from kernels import BACKENDS, KERNEL_ACCUMULATES, KERNEL_PRECISIONS, MODES, default_device, resolve_backend
from nets.files import write_json
from nets.step_timing import REPORT_SHAPES, speed_report
from probes.collective import allreduce_timing
from probes.device import describe_device, device_info
from probes.table import format_table
from probes.timing import GEMM_SHAPES, Row, conv_cases, gemm_cases, run_cases
from tools.options import CommaList, Device, OutputPath, ToolCommand

COLUMNS = [("case", "case"), ("role", "role"), ("M x N x K", "shape"), ("mode", "mode"), ("S", "splits"),
           ("prec", "precision"), ("ours ms", "ours_ms"), ("torch ms", "torch_ms"), ("ours TF/s", "ours_tflops"),
           ("torch TF/s", "torch_tflops"), ("ratio", "ratio")]


def bench_options(command):
    """The options every benchmark kind shares."""
    options = [
        click.option("--shapes", type=click.Choice(sorted(GEMM_SHAPES)), default=None,
                     help="Shape preset: gpu (4096^3, ConstNet-16-10 at batch 128), cpu (smaller cuts of those), "
                          "quick (the CPU experiments' ConstNet-10-1), tiny (tests) [default: gpu on CUDA, cpu "
                          "otherwise]."),
        click.option("--modes", type=CommaList(MODES), default=",".join(MODES), show_default=True,
                     help="Comma-separated reduction modes."),
        click.option("--precisions", type=CommaList(KERNEL_PRECISIONS), default=None,
                     help="Comma-separated operand precisions [default: all on CUDA, fp32 otherwise]."),
        click.option("--accumulate", type=click.Choice(KERNEL_ACCUMULATES), default="fp32", show_default=True),
        click.option("--splits", type=click.IntRange(min=2), default=8, show_default=True,
                     help="K chunks of splitk and atomic (fixed uses 1)."),
        click.option("--backend", type=click.Choice([b for b in BACKENDS if b != "native"]), default="auto",
                     show_default=True),
        click.option("--device", "device_name", type=Device(), default=None,
                     help="cpu, cuda or cuda:N [default: cuda if available]."),
        click.option("--warmup", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Warm-up runs (x25 ms of warm-up on CUDA)."),
        click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Timed runs (x25 ms of timing on CUDA)."),
        click.option("--json", "json_path", type=OutputPath(), default=None,
                     help="Write the rows and the device record to this file."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_benchmark(kind, shapes, modes, precisions, accumulate, splits, backend, device_name, warmup, repeats,
                  json_path):
    device = torch.device(device_name) if device_name else default_device()
    backend = resolve_backend(backend, device)
    on_gpu = device.type == "cuda"
    shapes = shapes or ("gpu" if on_gpu else "cpu")
    precisions = precisions or (KERNEL_PRECISIONS if on_gpu else ("fp32",))
    cases = gemm_cases(shapes) if kind == "gemm" else conv_cases(shapes)
    record = device_info()
    click.echo(f"{kind} on {describe_device(record)}; backend {backend}, shapes {shapes}", err=True)

    def progress(row: Row):
        click.echo(f"  {row.case} {row.role} {row.mode} {row.precision}: {row.ours_ms:.3f} ms "
                   f"(torch {row.torch_ms:.3f} ms)", err=True)

    rows = run_cases(cases, modes, precisions, accumulate, splits, backend, device, warmup, repeats, progress)
    click.echo(format_table([{**asdict(row), "shape": f"{row.m}x{row.n}x{row.k}"} for row in rows], COLUMNS))
    if json_path is not None:
        write_json(json_path, {
            "kind": kind,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": describe_device(record),
            "device_record": record,
            "settings": {"shapes": shapes, "backend": backend, "device": str(device), "warmup": warmup,
                         "repeats": repeats, "splits": splits, "accumulate": accumulate,
                         "torch_threads": torch.get_num_threads()},
            "rows": [asdict(row) for row in rows],
        })
        click.echo(f"wrote {json_path}", err=True)


# --shapes preset -> the ConstNet (depth, widen) whose gradient the allreduce benchmark reduces
ALLREDUCE_NETS = {"gpu": (16, 10), "cpu": (16, 10), "quick": (10, 1), "tiny": (7, 1)}


def run_allreduce_benchmark(shapes, modes, device_name, warmup, repeats, json_path, **kernel_options):
    """Seconds per DDP step of ConstNet's gradient, native all-reduce vs the ordered modes: gloo with 2
    ranks on CPU, NCCL with one rank per GPU (the kernel options do not apply)."""
    on_gpu = torch.device(device_name).type == "cuda" if device_name else default_device().type == "cuda"
    depth, widen = ALLREDUCE_NETS[shapes or "gpu"]
    net = nets.build("constnet", depth=depth, widen=widen)
    ranks = max(2, torch.cuda.device_count()) if on_gpu else 2
    ordered = [mode for mode in ("fixed", "splitk") if mode in modes]
    click.echo(f"allreduce: ConstNet-{depth}-{widen}'s gradient, {ranks} ranks", err=True)
    result = allreduce_timing([tuple(p.shape) for p in net.parameters()], ["native", *ordered], ranks,
                              "nccl" if on_gpu else "gloo", warmup, repeats)
    rows = [{"mode": mode, "median_ms": 1e3 * row["median_s"], "min_ms": 1e3 * row["min_s"],
             "ratio": result["ratio_to_native"][mode]} for mode, row in result["modes"].items()]
    click.echo(f"{result['parameters']} parameters on {describe_device(result['device'])}\n" + format_table(
        rows, [("all-reduce", "mode"), ("median ms/step", "median_ms"), ("min ms", "min_ms"),
               ("median / native", "ratio")]))
    if json_path is not None:
        write_json(json_path, result)


KERNEL_COLUMNS = [("role", "role"), ("M x N x K", "shape"), ("mode", "mode"), ("ours ms", "ours_ms"),
                  ("torch ms", "torch_ms"), ("ratio", "ratio")]
STEP_TABLES = {  # report part -> its table's columns
    "step": [("training step", "reduction"), ("median ms", "ms"), ("ratio", "ratio"), ("goal", "goal")],
    "conv": [("conv layer", "case"), *KERNEL_COLUMNS, ("floor", "floor"), ("goal", "goal")],
    "gemm": [("GEMM", "case"), *KERNEL_COLUMNS, ("goal", "goal")],
    "memory": [("step peak", "reduction"), ("MiB", "peak_mib"), ("/ fixed", "ratio"), ("goal", "goal")],
}


def run_step_benchmark(shapes, splits, device_name, warmup, repeats, json_path, **kernel_options):
    """The emulate backend's speed figures on this CPU (nets.step_timing), as tables."""
    if shapes not in (None, *REPORT_SHAPES):
        raise click.BadParameter(f"step times the {' or '.join(REPORT_SHAPES)} shapes, not {shapes!r}",
                                 param_hint="--shapes")
    if device_name is not None and torch.device(device_name).type != "cpu":
        raise click.BadParameter("step times the emulate backend on the CPU; leave --device out",
                                 param_hint="--device")
    record = device_info()
    click.echo(f"step on {describe_device(record)}; {torch.get_num_threads()} torch threads", err=True)
    report = speed_report(shapes or "cpu", splits, warmup, repeats,
                          lambda row: click.echo(f"  {row.case} {row.role} {row.mode}: {row.ratio:.2f}x", err=True))
    for part, columns in STEP_TABLES.items():
        click.echo(format_table(report[part], columns) + "\n")
    if json_path is not None:
        write_json(json_path, {"kind": "step", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "device": describe_device(record), "device_record": record,
                               "settings": {"shapes": shapes or "cpu", "splits": splits, "warmup": warmup,
                                            "repeats": repeats, "torch_threads": torch.get_num_threads()},
                               **report})
        click.echo(f"wrote {json_path}", err=True)


@click.command(cls=ToolCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("kind", type=click.Choice(["gemm", "conv", "allreduce", "step"]), default="gemm", required=False)
@bench_options
def cli(kind, **options):
    """Benchmark KIND: kernels.matmul vs torch.matmul over modes x precisions x shapes (gemm, the
    default), kernels.conv2d vs torch conv2d on ConstNet's layers per role (conv), or DDP steps of
    ConstNet's gradient with the fixed/splitk all-reduce vs native (allreduce; --shapes gpu/cpu:
    ConstNet-16-10, 17.1M parameters), or the emulate backend on this CPU against its goals (step:
    training steps of the quick preset's network per reduction, conv roles of the quick network and
    of ConstNet-16-10 at batch 8, each with the floor its own work sets, GEMM 1024^3, peak memory of
    a step; --shapes tiny: small cases)."""
    if kind == "allreduce":
        run_allreduce_benchmark(**options)
    elif kind == "step":
        run_step_benchmark(**options)
    else:
        run_benchmark(kind, **options)


if __name__ == "__main__":
    cli()
