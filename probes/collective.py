"""Are collectives bitwise reproducible? all_reduce and reduce_scatter in fresh process groups.

`collective_probe` launches a fresh process group (torch.multiprocessing spawn; gloo on CPU,
NCCL with one GPU per rank) several times per setting and compares the sums bit for bit:
  runs           each run against the first run of the same setting
  rank order     against the ranks' values added left to right in rank order in the dtype
                 (the "fixed" all-reduce of kernels.allreduce)
  largest size   the first n elements of an n-element message against the same elements of
                 the largest message (inputs are prefixes of one draw, so only the
                 collective's chunking can make them differ)
  first variant  against the first environment variant (NCCL_ALGO / NCCL_PROTO settings)
  ranks agree    whether every rank received the same all_reduce result
Each rank draws its inputs from a generator seeded by (seed, rank), spread over many binades
so that the order of additions shows in the last bits.

`allreduce_timing` times DDP steps whose cost is the gradient all-reduce of given parameter
shapes, for each all-reduce mode of kernels.allreduce.
"""
from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch.nn.parallel import DistributedDataParallel

from kernels.allreduce import ALLREDUCE_MODES, AllReduce, attach, close_process_group, reduce_scatter_single

from .compare import compare
from .device import describe_device, device_info
from .table import format_table

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16, "bf16": torch.bfloat16}
OPS = ("all_reduce", "reduce_scatter")
BACKENDS = ("gloo", "nccl")
NCCL_VARIANTS = ({}, {"NCCL_ALGO": "Ring"}, {"NCCL_ALGO": "Tree"}, {"NCCL_PROTO": "Simple"},
                 {"NCCL_PROTO": "LL"}, {"NCCL_PROTO": "LL128"})


def rank_inputs(rank: int, size: int, dtype: str, seed: int = 0) -> torch.Tensor:
    """Rank `rank`'s message: normal values times 2**k, k uniform in [-8, 8), rounded to dtype."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    values = torch.randn(size, generator=generator, dtype=torch.float64)
    scales = torch.randint(-8, 8, (size,), generator=generator).to(torch.float64).exp2()
    return (values * scales).to(DTYPES[dtype])


def rank_order_sum(world_size: int, size: int, dtype: str, seed: int = 0) -> torch.Tensor:
    """The ranks' messages added left to right in rank order, in the dtype."""
    total = rank_inputs(0, size, dtype, seed)
    for rank in range(1, world_size):
        total = total + rank_inputs(rank, size, dtype, seed)
    return total


def _rank_device(backend: str, rank: int) -> tuple[torch.device, dict]:
    if backend == "gloo":
        return torch.device("cpu"), {"rank": rank, "device": "cpu", "pid": os.getpid()}
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    props = torch.cuda.get_device_properties(device)
    return device, {"rank": rank, "device": str(device), "pid": os.getpid(), "name": props.name,
                    "uuid": str(props.uuid)}


def _worker(rank: int, world_size: int, backend: str, sizes: list, dtypes: list, seed: int, folder: str) -> None:
    """One rank of one launch: every (op, dtype, size), outputs saved to folder/rank.pt."""
    device, record = _rank_device(backend, rank)
    dist.init_process_group(backend, init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    outputs = {}
    for dtype in dtypes:
        message = rank_inputs(rank, max(sizes), dtype, seed).to(device)
        for size in sizes:
            summed = message[:size].clone()
            dist.all_reduce(summed)
            outputs["all_reduce", dtype, size] = summed.cpu()
            shard = size // world_size
            scattered = torch.empty(shard, dtype=summed.dtype, device=device)
            reduce_scatter_single(scattered, message[:shard * world_size].clone())
            outputs["reduce_scatter", dtype, size] = scattered.cpu()
    torch.save({"record": record, "outputs": outputs}, Path(folder) / f"{rank}.pt")
    close_process_group()


@contextmanager
def _environment(variables: dict):
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def launch(backend: str, world_size: int, sizes: list, dtypes: list, seed: int = 0, env: dict | None = None) -> dict:
    """One fresh process group: {"ranks": device records, "outputs": {(op, dtype, size): tensor},
    "ranks_agree": {(dtype, size): bool}}; reduce_scatter outputs are the ranks' shards joined."""
    with tempfile.TemporaryDirectory(prefix="collective-") as folder, _environment(env or {}):
        mp.start_processes(_worker, args=(world_size, backend, list(sizes), list(dtypes), seed, folder),
                           nprocs=world_size, join=True, start_method="spawn")
        saved = [torch.load(Path(folder) / f"{rank}.pt") for rank in range(world_size)]
    outputs, agree = {}, {}
    for dtype in dtypes:
        for size in sizes:
            reduced = [rank["outputs"]["all_reduce", dtype, size] for rank in saved]
            outputs["all_reduce", dtype, size] = reduced[0]
            agree[dtype, size] = all(compare(reduced[0], other).identical for other in reduced[1:])
            outputs["reduce_scatter", dtype, size] = torch.cat(
                [rank["outputs"]["reduce_scatter", dtype, size] for rank in saved])
    return {"ranks": [rank["record"] for rank in saved], "outputs": outputs, "ranks_agree": agree}


def _summary(comparison) -> dict:
    keys = ("n_differ", "frac_differ", "max_ulp", "first_diff", "identical")
    return {key: comparison.to_dict()[key] for key in keys}


def _worst(comparisons: list) -> dict | None:
    """The comparison with the most differing elements (None when there is nothing to compare)."""
    return _summary(max(comparisons, key=lambda c: c.n_differ)) if comparisons else None


def _check_group(backend: str, world_sizes) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {', '.join(BACKENDS)}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend='nccl' needs CUDA GPUs; this machine has none (use backend='gloo')")
    if any(world < 2 for world in world_sizes):
        raise ValueError(f"world sizes {list(world_sizes)} are not allowed; each must be >= 2")


def _check(backend: str, world_sizes, sizes, dtypes, runs: int, variants) -> None:
    _check_group(backend, world_sizes)
    unknown = [dtype for dtype in dtypes if dtype not in DTYPES]
    if unknown:
        raise ValueError(f"dtypes {unknown} are not allowed; choose from {', '.join(DTYPES)}")
    if any(size < max(world_sizes) for size in sizes):
        raise ValueError(f"sizes {list(sizes)} are not allowed; each must be >= the largest world size")
    if runs < 2 and len(variants) < 2:
        raise ValueError(f"runs={runs} is not allowed with one variant; compare at least 2 launches")


def collective_probe(backend: str | None = None, world_sizes=(2, 3), sizes=(1_000, 100_000), dtypes=("fp32", "fp16"),
                     runs: int = 2, variants=None, seed: int = 0, echo=lambda line: None) -> dict:
    """Launch `runs` fresh process groups per (variant, world size) and compare their sums.

    `backend` defaults to nccl where CUDA is available, else gloo. `variants` are environment
    settings applied to the ranks (default: none for gloo, NCCL_VARIANTS for nccl). Returns a
    JSON-ready record with one row per (variant, world size, op, dtype, size), the device record
    and the ranks' own records.
    """
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if variants is None:
        variants = NCCL_VARIANTS if backend == "nccl" else [{}]
    variants = [dict(variant) for variant in variants]
    _check(backend, world_sizes, sizes, dtypes, runs, variants)
    largest, rows, ranks, first_variant = max(sizes), [], {}, {}
    for number, env in enumerate(variants):
        for world in world_sizes:
            echo(f"{backend} world size {world}, env {env or 'default'}: {runs} launches")
            launches = [launch(backend, world, sizes, dtypes, seed, env) for _ in range(runs)]
            ranks[f"{number}/{world}"] = [run["ranks"] for run in launches]
            references = {dtype: rank_order_sum(world, largest, dtype, seed) for dtype in dtypes}
            for (op, dtype, size), output in launches[0]["outputs"].items():
                key, n = (op, dtype, size), output.numel()
                if number == 0:
                    first_variant[world, key] = output
                rows.append({
                    "variant": number, "env": env, "world_size": world, "op": op, "dtype": dtype, "size": size,
                    "runs": _worst([compare(output, run["outputs"][key]) for run in launches[1:]]),
                    "rank_order": _summary(compare(output, references[dtype][:n])),
                    "largest_size": _summary(compare(output, launches[0]["outputs"][op, dtype, largest][:n])),
                    "first_variant": _summary(compare(output, first_variant[world, key])) if number else None,
                    "ranks_agree": (all(run["ranks_agree"][dtype, size] for run in launches)
                                    if op == "all_reduce" else None),
                })
    return {"device": device_info(), "backend": backend, "world_sizes": list(world_sizes), "sizes": list(sizes),
            "dtypes": list(dtypes), "runs": runs, "seed": seed, "variants": variants, "rank_devices": ranks,
            "rows": rows}


class _Gradients(torch.nn.Module):
    """Parameters of the given shapes whose gradient is the input (a scalar): backward is free."""

    def __init__(self, shapes):
        super().__init__()
        self.tensors = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(shape)) for shape in shapes)

    def forward(self, x):
        return sum((tensor * x).sum() for tensor in self.tensors)


def _timing_worker(rank: int, world_size: int, backend: str, shapes: list, modes: list, warmup: int, steps: int,
                   folder: str) -> None:
    """One rank: DDP steps of the gradient, the modes taking turns step by step (so that a busy
    machine slows them alike); rank 0 saves each step's seconds."""
    device, _ = _rank_device(backend, rank)
    dist.init_process_group(backend, init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    models = {mode: DistributedDataParallel(_Gradients(shapes).to(device)) for mode in modes}
    for mode, model in models.items():
        attach(model, AllReduce(mode))
    x = torch.full((), rank + 1.0, device=device)
    seconds = {mode: [] for mode in modes}
    for step in range(warmup + steps):
        for mode, model in models.items():
            dist.barrier()
            started = time.perf_counter()
            model(x).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                seconds[mode].append(time.perf_counter() - started)
    del models, model
    if rank == 0:
        torch.save(seconds, Path(folder) / "seconds.pt")
    close_process_group()


def allreduce_timing(shapes, modes=ALLREDUCE_MODES, world_size: int = 2, backend: str | None = None,
                     warmup: int = 2, steps: int = 10) -> dict:
    """Seconds per DDP step (backward of a free gradient: mostly the all-reduce) of each mode.

    `shapes` are the parameters' shapes (e.g. a network's); each step all-reduces all of them
    in DDP's buckets. Returns {"modes": {mode: {"median_s", "min_s", "seconds"}}, "ratio_to_native"
    (medians), the settings and the device record}.
    """
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    _check_group(backend, [world_size])
    with tempfile.TemporaryDirectory(prefix="allreduce-") as folder:
        mp.start_processes(_timing_worker, args=(world_size, backend, [list(s) for s in shapes], list(modes), warmup,
                                                 steps, folder), nprocs=world_size, join=True, start_method="spawn")
        seconds = torch.load(Path(folder) / "seconds.pt")
    table = {mode: {"median_s": statistics.median(times), "min_s": min(times), "seconds": times}
             for mode, times in seconds.items()}
    native = table.get("native", {}).get("median_s")
    return {"device": device_info(), "backend": backend, "world_size": world_size,
            "parameters": sum(math.prod(shape) for shape in shapes), "warmup": warmup, "steps": steps,
            "modes": table, "ratio_to_native": {mode: row["median_s"] / native for mode, row in table.items()}
            if native else None}


TABLE_COLUMNS = [("variant", "variant"), ("world", "world_size"), ("op", "op"), ("dtype", "dtype"),
                 ("size", "size"), ("runs identical", "runs_identical"), ("vs rank order", "rank_order_frac"),
                 ("max ulp", "rank_order_ulp"), ("first diff", "rank_order_first"),
                 ("vs largest", "largest_frac"), ("vs variant 0", "variant_frac"), ("ranks agree", "ranks_agree")]


def _table_row(row: dict) -> dict:
    first = row["rank_order"]["first_diff"]
    return {
        "variant": row["variant"], "world_size": row["world_size"], "op": row["op"], "dtype": row["dtype"],
        "size": row["size"], "runs_identical": row["runs"]["identical"] if row["runs"] else None,
        "rank_order_frac": row["rank_order"]["frac_differ"], "rank_order_ulp": row["rank_order"]["max_ulp"],
        "rank_order_first": first[0] if first else None, "largest_frac": row["largest_size"]["frac_differ"],
        "variant_frac": row["first_variant"]["frac_differ"] if row["first_variant"] else None,
        "ranks_agree": row["ranks_agree"],
    }


def collective_text(record: dict) -> str:
    """The probe's record as the machine's line, the variants and a table (fractions of differing elements)."""
    variants = "; ".join(f"{number}: {env or 'default'}" for number, env in enumerate(record["variants"]))
    return (f"{record['backend']} on {describe_device(record['device'])}\nvariants {variants}\n"
            + format_table([_table_row(row) for row in record["rows"]], TABLE_COLUMNS)
            + "\n\nvs rank order / vs largest / vs variant 0: fraction of elements whose bits differ")


def int_list(text: str, name: str) -> list[int]:
    """A comma-separated list of positive integers, e.g. "2,3"."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{name}={text!r} is not allowed; give comma-separated positive integers, e.g. 2,3")
    return values
