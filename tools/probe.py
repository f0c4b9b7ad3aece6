#!/usr/bin/env python
"""probe.py: the toolkit's measuring instruments, one subcommand per probe.

    device       the machine: host, GPUs, driver (NVML)
    symmetry     forward/backward weight correlation and effective width of a checkpoint or a net
    repeat       run one op, or N training steps of a net, several times; which bits differ
    reveal       recover the summation tree of a reduction (our kernels, torch.matmul, torch.sum)
    noise        error against float64 and run-to-run spread, across modes and precisions
    audit        which ops of a training step are bitwise non-deterministic on this device
    fingerprint  fingerprints of the fixed, seeded suite, with the device record (--out F.json)
    compare      two fingerprint files side by side: which entries match bit for bit

Every subcommand prints a table; --json FILE also writes the result as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import kernels  # noqa: E402
from kernels.reduction import ACCUMULATES, GRANULARITIES, MODES, PRECISIONS, ROLES  # noqa: E402
from probes import compare_dicts, describe_device, device_info, fingerprint, symmetry_perturbation  # noqa: E402
from probes.audit import audit as run_audit  # noqa: E402
from probes.compare import compare  # noqa: E402
from probes.noise import noise_magnitude  # noqa: E402
from probes.reveal import kernel_reducer, reveal as run_reveal, torch_matmul_reducer, torch_sum_reducer  # noqa: E402
from probes.suite import compare_suites, run_suite  # noqa: E402
from probes.symmetry import model_symmetry, state_dict_symmetry  # noqa: E402
from probes.table import format_table  # noqa: E402
from probes.workloads import (  # noqa: E402
    DEFAULT_SHAPES,
    DTYPES,
    OPS,
    TrainingSetup,
    build_model,
    check_dtype_name,
    make_inputs,
    parse_shape,
    reduction_length,
    run_op,
    train,
    training_batch,
)

KERNEL_PRECISIONS = tuple(p for p in PRECISIONS if p != "fp64")
KERNEL_ACCUMULATES = tuple(a for a in ACCUMULATES if a != "fp64")
SMALL_CONSTNET = (("depth", 7), ("widen", 1), ("init", "zero"))


# ---------------------------------------------------------------- shared helpers

def write_json(path: str, data) -> None:
    """Write `data` as JSON atomically (temp file + rename)."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    temp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    temp.replace(target)


def emit(result, text: str, json_path: str | None) -> None:
    click.echo(text)
    if json_path:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_value(text: str):
    """An option value: JSON when it parses (numbers, true/false, null), the plain string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_net_options(net: str, pairs) -> tuple:
    options = []
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} must be KEY=VALUE", param_hint="--net-option")
        key, value = pair.split("=", 1)
        options.append((key, parse_value(value)))
    if not options and net == "constnet":
        return SMALL_CONSTNET
    return tuple(options)


def parse_list(text: str, allowed: tuple, name: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if item not in allowed]
    if bad or not items:
        raise click.BadParameter(f"{text!r}: choose from {', '.join(allowed)}", param_hint=name)
    return items


def reduction_options(fn):
    """--mode --splits --seed --granularity --precision --accumulate --backend."""
    options = [
        click.option("--mode", type=click.Choice(MODES), default="fixed", show_default=True),
        click.option("--splits", type=int, default=None, help="K chunks (default 1 for fixed, 8 otherwise)"),
        click.option("--seed", type=int, default=0, show_default=True, help="splitk order seed"),
        click.option("--granularity", type=click.Choice(GRANULARITIES), default="element", show_default=True),
        click.option("--precision", type=click.Choice(KERNEL_PRECISIONS), default="fp32", show_default=True),
        click.option("--accumulate", type=click.Choice(KERNEL_ACCUMULATES), default="fp32", show_default=True),
        click.option("--backend", type=click.Choice(kernels.BACKENDS), default="auto", show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def roles_option(fn):
    return click.option("--roles", default=",".join(ROLES), show_default=True,
                        help="layer roles that use this reduction (the others stay fixed fp32)")(fn)


def make_reduction(mode, splits, seed, granularity, precision, accumulate) -> kernels.Reduction:
    try:
        return kernels.Reduction(mode=mode, splits=splits, seed=seed, granularity=granularity,
                                 precision=precision, accumulate=accumulate)
    except (TypeError, ValueError) as error:
        raise click.UsageError(str(error)) from error


def make_policy(reduction: kernels.Reduction, roles: str) -> kernels.Policy:
    chosen = parse_list(roles, ROLES, "--roles")
    return kernels.Policy(**{role: reduction for role in chosen})


def net_options(fn):
    """--net --net-option --batch --image-size --data-seed."""
    import nets

    options = [
        click.option("--net", type=click.Choice(sorted(nets.NETWORKS)), default="constnet", show_default=True),
        click.option("--net-option", "net_option", multiple=True,
                     help="KEY=VALUE for nets.build (repeatable; default for constnet: depth=7 widen=1 init=zero)"),
        click.option("--batch", type=int, default=8, show_default=True),
        click.option("--image-size", type=int, default=8, show_default=True),
        click.option("--data-seed", type=int, default=0, show_default=True, help="seeds weights and data"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def json_option(fn):
    return click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                        help="also write the result to this JSON file")(fn)


def device_option(fn):
    return click.option("--device", default=None, help="cpu or cuda (default: cuda when available)")(fn)


class ProbeGroup(click.Group):
    """Reports invalid arguments found by the probes (ValueError / TypeError) as usage errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, TypeError) as error:
            raise click.ClickException(str(error)) from error


@click.group(cls=ProbeGroup)
def cli():
    """Measure channel symmetry, bitwise divergence, accumulation order and noise."""


# ---------------------------------------------------------------- device

def device_rows(record: dict) -> list[dict]:
    rows = [{"field": f"host.{key}", "value": value} for key, value in record["host"].items()]
    if not record.get("nvidia"):
        return rows + [{"field": "nvidia", "value": False}, {"field": "reason", "value": record.get("reason")}]
    rows += [{"field": key, "value": record.get(key)} for key in ("driver_version", "cuda_driver_version", "gpu_count")]
    for gpu in record.get("gpus", []):
        rows += [{"field": f"gpu{gpu['index']}.{key}", "value": value}
                 for key, value in gpu.items() if key not in ("index", "unreadable")]
        rows += [{"field": f"gpu{gpu['index']}.{key}", "value": f"unreadable: {why}"}
                 for key, why in gpu.get("unreadable", {}).items()]
    return rows


@cli.command()
@json_option
def device(json_path):
    """The device record: host, and every NVIDIA GPU as NVML reports it."""
    record = device_info()
    emit(record, format_table(device_rows(record), [("field", "field"), ("value", "value")]), json_path)


# ---------------------------------------------------------------- symmetry

def load_state_dict(path: str) -> dict:
    """A state_dict from a checkpoint file, or from its "model" / "state_dict" entry."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            return loaded[key]
    return loaded


@cli.command()
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a saved state_dict (or a dict with 'model' / 'state_dict'); default: build --net fresh")
@net_options
@click.option("--kind", type=click.Choice(["cosine", "pearson"]), default="cosine", show_default=True)
@click.option("--max-rows", type=int, default=None, help="sample this many rows (seeded); default exact")
@click.option("--perturbation", is_flag=True,
              help="also run one training step (random batch) and report each layer's symmetry-breaking "
                   "perturbation of its output and output gradient; a checkpoint is loaded into --net")
@json_option
def symmetry(checkpoint, net, net_option, batch, image_size, data_seed, kind, max_rows, perturbation, json_path):
    """Forward / backward correlation and effective width of every conv and linear layer."""
    state = load_state_dict(checkpoint) if checkpoint else None
    setup = TrainingSetup(net=net, net_options=parse_net_options(net, net_option), batch=batch,
                          image_size=image_size, seed=data_seed)
    if state is not None and not perturbation:
        report = state_dict_symmetry(state, kind, max_rows, data_seed)
    else:
        model = build_model(setup, None, "native")
        if state is not None:
            model.load_state_dict(state)
        report = model_symmetry(model, kind, max_rows, data_seed)
    report["source"] = checkpoint or setup.to_dict()
    columns = [("layer", "name"), ("kind", "kind"), ("n_out", "n_out"), ("n_in", "n_in"),
               ("C_forward", "forward"), ("C_backward", "backward"), ("eff_width", "effective_width")]
    if perturbation:
        images, labels = training_batch(setup, 0)
        measured = {r["name"]: r for r in symmetry_perturbation(model, images, labels, F.cross_entropy)}
        for layer in report["layers"]:
            layer["perturbation_forward"] = measured.get(layer["name"], {}).get("forward")
            layer["perturbation_backward"] = measured.get(layer["name"], {}).get("backward")
        columns += [("perturb fwd", "perturbation_forward"), ("perturb bwd", "perturbation_backward")]
    text = format_table(report["layers"], columns)
    text += (f"\n\n{kind} correlation; over {', '.join(report['summary_kinds'])} layers: "
             f"max C_f = {report['max_forward']}, mean dissimilarity = {report['mean_dissimilarity']}")
    emit(report, text, json_path)


# ---------------------------------------------------------------- repeat

def repeat_op(op, shape, reduction, backend, runs, replay, data_seed, dtype, device) -> dict:
    inputs = make_inputs(op, shape, data_seed, dtype, device)
    outputs = []
    counter = kernels.CallCounter()
    for _ in range(runs):
        with kernels.counting(kernels.CallCounter() if replay else counter):
            outputs.append(run_op(op, shape, inputs, reduction, backend))
    rows = [{"run": run, **compare(outputs[0], out).to_dict()} for run, out in enumerate(outputs[1:], start=1)]
    return {"op": op, "shape": str(shape), "reduction": reduction.describe(), "backend": backend,
            "replay": replay, "runs": rows}


def first_divergence(states_a: list, states_b: list) -> int | None:
    """The first step (0-based) after which two runs' states differ in any bit, or None."""
    for step, (a, b) in enumerate(zip(states_a, states_b)):
        if fingerprint(a) != fingerprint(b):
            return step
    return None


def repeat_training(setup, policy, backend, runs, device) -> dict:
    results = [train(setup, policy, backend, device) for _ in range(runs)]
    first = results[0]
    rows, tensors = [], []
    for run, other in enumerate(results[1:], start=1):
        comparisons = compare_dicts(first["states"][-1], other["states"][-1])
        differing = {name: c for name, c in comparisons.items() if not c.identical}
        rows.append({"run": run, "first_divergent_step": first_divergence(first["states"], other["states"]),
                     "tensors_differing": len(differing), "tensors": len(comparisons),
                     "max_ulp": max((c.max_ulp or 0.0 for c in differing.values()), default=0.0),
                     "final_loss": other["losses"][-1]})
        tensors += [{"run": run, "tensor": name, **c.to_dict()} for name, c in differing.items()]
    return {"setup": setup.to_dict(), "policy": policy.to_dict(), "backend": backend,
            "losses": [r["losses"] for r in results], "runs": rows, "differing_tensors": tensors}


@cli.command()
@click.option("--op", type=click.Choice(OPS), default=None, help="one op (default: a training run of --net)")
@click.option("--shape", default=None, help="op shape: MxKxN (matmul) or NxCINxCOUTxSIZE[kK][sS][pP] (conv)")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="fp32", show_default=True, help="op input dtype")
@click.option("--steps", type=int, default=1, show_default=True, help="training steps per run")
@click.option("--runs", type=int, default=2, show_default=True)
@click.option("--replay/--no-replay", default=True, show_default=True,
              help="every run restarts splitk call numbers at 0 (off: calls continue across runs)")
@net_options
@reduction_options
@roles_option
@device_option
@json_option
def repeat(op, shape, dtype, steps, runs, replay, net, net_option, batch, image_size, data_seed,
           mode, splits, seed, granularity, precision, accumulate, backend, roles, device, json_path):
    """Run one op, or --steps training steps of a net, --runs times; report differing bits.

    With --op the reduction runs in that op's role; --roles applies to training runs.
    """
    if runs < 2:
        raise click.BadParameter("needs at least 2 runs to compare", param_hint="--runs")
    reduction = make_reduction(mode, splits, seed, granularity, precision, accumulate)
    device = device or default_device()
    if op:
        result = repeat_op(op, parse_shape(op, shape) if shape else DEFAULT_SHAPES[op], reduction, backend, runs,
                           replay, data_seed, check_dtype_name(dtype), device)
        columns = [("run", "run"), ("vs run 0: differing", "n_differ"), ("fraction", "frac_differ"),
                   ("max ULP", "max_ulp"), ("mean ULP", "mean_ulp"), ("first diff", "first_diff")]
        text = f"{op} {result['shape']} {result['reduction']} on {backend}\n" + format_table(result["runs"], columns)
    else:
        setup = TrainingSetup(net=net, net_options=parse_net_options(net, net_option), batch=batch,
                              image_size=image_size, steps=steps, seed=data_seed)
        policy = make_policy(reduction, roles)
        result = repeat_training(setup, policy, backend, runs, device)
        columns = [("run", "run"), ("first divergent step", "first_divergent_step"),
                   ("tensors differing", "tensors_differing"), ("of", "tensors"), ("max ULP", "max_ulp"),
                   ("final loss", "final_loss")]
        text = (f"{net} x{steps} steps, policy {policy.describe()} on {backend}\n"
                + format_table(result["runs"], columns))
        if result["differing_tensors"]:
            text += "\n\n" + format_table(result["differing_tensors"], [
                ("run", "run"), ("tensor", "tensor"), ("differing", "n_differ"), ("max ULP", "max_ulp"),
                ("max abs", "max_abs")])
    emit(result, text, json_path)


# ---------------------------------------------------------------- reveal

@cli.command()
@click.option("--k", "k", type=int, default=64, show_default=True, help="reduction length")
@click.option("--target", type=click.Choice(["kernels", "torch-matmul", "torch-sum"]), default="kernels",
              show_default=True)
@click.option("--calls", default="0", show_default=True, help="comma-separated splitk call numbers to replay")
@click.option("--repeat", "repeats", type=int, default=2, show_default=True, help="reveals per call number")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16", "fp64"]), default="fp32", show_default=True,
              help="operand dtype of the torch targets")
@click.option("--assume-accumulate", type=click.Choice(["fp32", "fp16", "bf16", "fp64"]), default=None,
              help="accumulation format to plant for (default: the reduction's, or fp32 for torch targets)")
@reduction_options
@device_option
@json_option
def reveal(k, target, calls, repeats, dtype, assume_accumulate, mode, splits, seed, granularity, precision,
           accumulate, backend, device, json_path):
    """Recover the summation tree of a length-K reduction by masking (+M, -M and ones)."""
    device = device or default_device()
    reduction = make_reduction(mode, splits, seed, granularity, precision, accumulate)
    call_numbers = [int(c) for c in calls.split(",") if c.strip()]
    rows = []
    for call in call_numbers:
        for run in range(repeats):
            if target == "kernels":
                reducer = kernel_reducer(reduction, backend, device, call)
                operand, acc, products = precision, assume_accumulate or accumulate, True
            elif target == "torch-matmul":
                reducer = torch_matmul_reducer(DTYPES[dtype], device)
                operand, acc, products = dtype, assume_accumulate or "fp32", True
            else:
                reducer = torch_sum_reducer(DTYPES[dtype], device)
                operand, acc, products = dtype, assume_accumulate or "fp32", False
            start = time.perf_counter()
            result = run_reveal(reducer, k, operand, acc, products)
            row = {"call": call, "run": run, "seconds": round(time.perf_counter() - start, 3), **result.to_dict()}
            same_call = [r for r in rows if r["call"] == call]
            row["same_as_first_run"] = same_call[0]["tree"] == row["tree"] if same_call else True
            rows.append(row)
    label = reduction.describe() if target == "kernels" else f"{target} {dtype}"
    trees = sorted({row["tree"] for row in rows})
    text = format_table(rows, [("call", "call"), ("run", "run"), ("consistent", "consistent"),
                               ("same as run 0", "same_as_first_run"), ("seconds", "seconds")])
    text += f"\n\n{label}, K={k}, on {backend if target == 'kernels' else device}: {len(trees)} distinct tree(s)\n"
    text += "\n".join(f"  call {row['call']} run {row['run']}: {row['tree']}" for row in rows)
    emit({"target": target, "reduction": label, "k": k, "reveals": rows}, text, json_path)


# ---------------------------------------------------------------- noise

@cli.command()
@click.option("--ops", default=",".join(OPS), show_default=True)
@click.option("--shape", default=None, help="shape for a single op (default: a small shape per op)")
@click.option("--modes", default="fixed,splitk,atomic", show_default=True)
@click.option("--precisions", default="fp32,tf32,fp16,bf16", show_default=True)
@click.option("--accumulates", default="fp32", show_default=True)
@click.option("--splits", type=int, default=8, show_default=True, help="chunks for splitk/atomic")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="element", show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="fp32", show_default=True)
@click.option("--backend", type=click.Choice(kernels.BACKENDS), default="auto", show_default=True)
@click.option("--data-seed", type=int, default=0, show_default=True)
@device_option
@json_option
def noise(ops, shape, modes, precisions, accumulates, splits, granularity, repeats, dtype, backend, data_seed,
          device, json_path):
    """Error against float64 (ULPs, relative) and run-to-run spread per op, mode and precision."""
    device = device or default_device()
    op_list = parse_list(ops, OPS, "--ops")
    if shape and len(op_list) != 1:
        raise click.BadParameter("--shape needs exactly one op in --ops", param_hint="--shape")
    rows = []
    for op in op_list:
        op_shape = parse_shape(op, shape) if shape else DEFAULT_SHAPES[op]
        for mode in parse_list(modes, MODES, "--modes"):
            for precision in parse_list(precisions, KERNEL_PRECISIONS, "--precisions"):
                for acc in parse_list(accumulates, KERNEL_ACCUMULATES, "--accumulates"):
                    chunks = 1 if mode == "fixed" else min(splits, reduction_length(op, op_shape))
                    reduction = make_reduction(mode, chunks, 0, granularity, precision, acc)
                    result = noise_magnitude(op, op_shape, reduction, backend, repeats, data_seed,
                                             check_dtype_name(dtype), device)
                    rows.append({"op": op, "shape": result["shape"], "reduction": result["reduction"],
                                 **{f"ulp_{q}": v for q, v in result["error"]["ulp"].items()},
                                 **{f"rel_{q}": v for q, v in result["error"]["rel"].items()},
                                 "spread_frac": result["spread"]["frac_differ"],
                                 "spread_ulp": result["spread"]["max_ulp"]})
    columns = [("op", "op"), ("shape", "shape"), ("reduction", "reduction"), ("ULP med", "ulp_median"),
               ("ULP p99", "ulp_p99"), ("ULP max", "ulp_max"), ("rel med", "rel_median"), ("rel p99", "rel_p99"),
               ("rel max", "rel_max"), ("runs differ", "spread_frac"), ("run ULP max", "spread_ulp")]
    text = (f"error vs float64 (ULPs of {dtype} to the rounded reference; relative) and spread over "
            f"{repeats} calls, backend {backend}, {describe_device(device_info())}\n" + format_table(rows, columns))
    emit({"backend": backend, "dtype": dtype, "repeats": repeats, "rows": rows}, text, json_path)


# ---------------------------------------------------------------- audit

@cli.command()
@net_options
@reduction_options
@roles_option
@click.option("--runs", type=int, default=2, show_default=True)
@click.option("--all-rows/--nondeterministic-only", default=True, show_default=True)
@device_option
@json_option
def audit(net, net_option, batch, image_size, data_seed, mode, splits, seed, granularity, precision, accumulate,
          backend, roles, runs, all_rows, device, json_path):
    """Run every op of a training step twice on the same inputs; list the bitwise non-deterministic ones."""
    device = device or default_device()
    reduction = make_reduction(mode, splits, seed, granularity, precision, accumulate)
    policy = make_policy(reduction, roles)
    setup = TrainingSetup(net=net, net_options=parse_net_options(net, net_option), batch=batch,
                          image_size=image_size, seed=data_seed)
    model = build_model(setup, policy, backend, device)
    images, labels = training_batch(setup, 0, device)
    rows = run_audit(model, images, labels, runs=runs, seed=data_seed)
    shown = rows if all_rows else [row for row in rows if not row["deterministic"]]
    noisy = sorted({f"{row['op']} {row['role']}" for row in rows if not row["deterministic"]})
    text = (f"{net}, policy {policy.describe()}, backend {backend}, {describe_device(device_info())}\n"
            + format_table(shown, [("op", "op"), ("role", "role"), ("deterministic", "deterministic"),
                                   ("differing", "n_differ"), ("max ULP", "max_ulp")]))
    text += f"\n\nbitwise non-deterministic: {', '.join(noisy) if noisy else 'none'}"
    emit({"setup": setup.to_dict(), "policy": policy.to_dict(), "backend": backend, "device": device_info(),
          "rows": rows}, text, json_path)


# ---------------------------------------------------------------- fingerprint / compare

@cli.command(name="fingerprint")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="JSON file to write")
@device_option
def fingerprint_command(out_path, device):
    """Fingerprints of the fixed, seeded suite (every op and mode, and short training runs)."""
    result = run_suite(device, progress=lambda name: click.echo(f"  {name}", err=True))
    rows = [{"entry": name, "backend": entry["backend"], "fingerprint": entry["fingerprint"][:16]}
            for name, entry in result["entries"].items()]
    text = f"{describe_device(result['device'])}\n" + format_table(
        rows, [("entry", "entry"), ("backend", "backend"), ("sha256 (first 16)", "fingerprint")])
    emit(result, text, out_path)


def device_summary(record: dict) -> dict:
    host = record.get("host", {})
    gpus = record.get("gpus", [])
    return {"host": host.get("hostname"), "cpu": host.get("cpu_model"), "torch": host.get("torch"),
            "torch cuda": host.get("torch_cuda"), "gpu": ", ".join(str(g.get("name")) for g in gpus) or "none",
            "compute capability": ", ".join(str(g.get("compute_capability")) for g in gpus) or "-",
            "driver": record.get("driver_version"), "cuda driver": record.get("cuda_driver_version")}


@cli.command(name="compare")
@click.argument("file_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("file_b", type=click.Path(exists=True, dir_okay=False))
@click.option("--differing-only/--all-entries", default=False, show_default=True)
@json_option
def compare_command(file_a, file_b, differing_only, json_path):
    """Which fingerprint entries of two files (from two GPUs, say) match bit for bit."""
    a, b = (json.loads(Path(path).read_text()) for path in (file_a, file_b))
    rows = compare_suites(a, b)
    summary_a, summary_b = device_summary(a.get("device", {})), device_summary(b.get("device", {}))
    devices = [{"field": key, "a": summary_a[key], "b": summary_b[key]} for key in summary_a]
    shown = [row for row in rows if row["status"] != "match"] if differing_only else rows
    counts = {status: sum(row["status"] == status for row in rows)
              for status in ("match", "differ", "only in a", "only in b")}
    text = format_table(devices, [("device", "field"), ("a: " + file_a, "a"), ("b: " + file_b, "b")])
    text += "\n\n" + format_table(shown, [("entry", "entry"), ("status", "status"), ("backend a", "backend_a"),
                                          ("backend b", "backend_b")])
    text += "\n\n" + ", ".join(f"{count} {status}" for status, count in counts.items())
    emit({"a": file_a, "b": file_b, "devices": devices, "counts": counts, "entries": rows}, text, json_path)


if __name__ == "__main__":
    cli()
