#!/usr/bin/env python
"""probe.py: the toolkit's measuring instruments, one subcommand per probe.

    device       the machine: host, GPUs, driver (NVML)
    symmetry     forward/backward weight correlation and effective width of a checkpoint or a net
    repeat       run one op, or N training steps of a net, several times; which bits differ
    reveal       recover the summation tree of a reduction (our kernels, torch.matmul, torch.sum)
    noise        error against float64 and run-to-run spread, across modes and precisions
    audit        which ops of a training step are bitwise non-deterministic on this device
    invariance   does a row of an output change with the rest of its batch (native, policy_mode)?
    fingerprint  fingerprints of the fixed, seeded suite, with the device record (--out F.json)
    compare      two fingerprint files side by side: which entries match bit for bit
    collective   all_reduce / reduce_scatter in fresh process groups: which bits change, and with what

Every subcommand prints a table; --json FILE also writes the result as JSON.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tools/NAME.py`: import from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import click
import torch.nn.functional as F

import kernels
import nets
from kernels import GRANULARITIES, KERNEL_ACCUMULATES, KERNEL_PRECISIONS, MODES, ROLES
from nets.suite import compare_suites, load_suite, run_suite
from nets.workloads import TrainingSetup, build_model, load_state_dict, net_options, repeat_training, training_batch
from probes import describe_device, device_info, symmetry_perturbation
from probes import collective as collectives
from probes.audit import audit as run_audit
from probes.device import device_rows, device_summary
from probes.invariance import OPS as INVARIANCE_OPS
from probes.invariance import invariance_rows, make_op, mode_contexts, summary_rows
from probes.noise import noise_rows
from probes.ops import DEFAULT_SHAPES, DTYPES, OPS, check_dtype_name, parse_shape
from probes.repeat import repeat_op
from probes.reveal import TARGETS, reveal_runs
from probes.symmetry import model_symmetry, state_dict_symmetry
from probes.table import format_table
from tools.options import CommaList, IntList, OutputPath, ToolGroup, device_option, emit, json_option


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
    return click.option("--roles", type=CommaList(ROLES), default=",".join(ROLES), show_default=True,
                        help="layer roles that use this reduction (the others stay fixed fp32)")(fn)


def make_reduction(mode, splits, seed, granularity, precision, accumulate) -> kernels.Reduction:
    return kernels.Reduction(mode=mode, splits=splits, seed=seed, granularity=granularity, precision=precision,
                             accumulate=accumulate)


def setup_options(fn):
    """--net --net-option --batch --image-size --data-seed."""
    options = [
        click.option("--net", type=click.Choice(sorted(nets.NETWORKS)), default="constnet", show_default=True),
        click.option("--net-option", "net_option", multiple=True,
                     help="KEY=VALUE for nets.build (repeatable; default for constnet: depth=7 widen=1 init=zero)"),
        click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--image-size", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--data-seed", type=int, default=0, show_default=True, help="seeds weights and data"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_setup(net, net_option, batch, image_size, data_seed, steps: int = 3) -> TrainingSetup:
    return TrainingSetup(net=net, net_options=net_options(net, net_option), batch=batch, image_size=image_size,
                         steps=steps, seed=data_seed)


@click.group(cls=ToolGroup)
def cli():
    """Measure channel symmetry, bitwise divergence, accumulation order and noise."""


@cli.command()
@json_option
def device(json_path):
    """The device record: host, and every NVIDIA GPU as NVML reports it."""
    record = device_info()
    emit(record, format_table(device_rows(record), [("field", "field"), ("value", "value")]), json_path)


@cli.command()
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a saved state_dict (or a dict with 'model' / 'state_dict'); default: build --net fresh")
@setup_options
@click.option("--kind", type=click.Choice(["cosine", "pearson"]), default="cosine", show_default=True)
@click.option("--max-rows", type=click.IntRange(min=2), default=None, help="rows to sample (seeded; default: all)")
@click.option("--perturbation", is_flag=True,
              help="also run one training step (random batch) and report each layer's symmetry-breaking "
                   "perturbation of its output and output gradient; a checkpoint is loaded into --net")
@json_option
def symmetry(checkpoint, net, net_option, batch, image_size, data_seed, kind, max_rows, perturbation, json_path):
    """Forward / backward correlation and effective width of every conv and linear layer."""
    state = load_state_dict(checkpoint) if checkpoint else None
    setup = make_setup(net, net_option, batch, image_size, data_seed)
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


@cli.command()
@click.option("--op", type=click.Choice(OPS), default=None, help="one op (default: a training run of --net)")
@click.option("--shape", default=None, help="op shape: MxKxN (matmul) or NxCINxCOUTxSIZE[kK][sS][pP] (conv)")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="fp32", show_default=True, help="op input dtype")
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True, help="training steps per run")
@click.option("--runs", type=click.IntRange(min=2), default=2, show_default=True)
@click.option("--replay/--no-replay", default=True, show_default=True,
              help="every run restarts splitk call numbers at 0 (off: calls continue across runs)")
@setup_options
@reduction_options
@roles_option
@device_option
@json_option
def repeat(op, shape, dtype, steps, runs, replay, net, net_option, batch, image_size, data_seed,
           mode, splits, seed, granularity, precision, accumulate, backend, roles, device, json_path):
    """Run one op, or --steps training steps of a net, --runs times; report differing bits.

    With --op the reduction runs in that op's role; --roles applies to training runs.
    """
    reduction = make_reduction(mode, splits, seed, granularity, precision, accumulate)
    device = device or kernels.default_device()
    if op:
        result = repeat_op(op, parse_shape(op, shape) if shape else DEFAULT_SHAPES[op], reduction, backend, runs,
                           replay, data_seed, check_dtype_name(dtype), device)
        columns = [("run", "run"), ("vs run 0: differing", "n_differ"), ("fraction", "frac_differ"),
                   ("max ULP", "max_ulp"), ("mean ULP", "mean_ulp"), ("first diff", "first_diff")]
        text = f"{op} {result['shape']} {result['reduction']} on {backend}\n" + format_table(result["runs"], columns)
    else:
        policy = kernels.Policy(**{role: reduction for role in roles})
        result = repeat_training(make_setup(net, net_option, batch, image_size, data_seed, steps), policy, backend,
                                 runs, device)
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


@cli.command()
@click.option("--k", "k", type=int, default=64, show_default=True, help="reduction length")
@click.option("--target", type=click.Choice(TARGETS), default="kernels", show_default=True)
@click.option("--calls", type=IntList(), default="0", show_default=True,
              help="comma-separated splitk call numbers to replay")
@click.option("--repeat", "repeats", type=click.IntRange(min=1), default=2, show_default=True, help="reveals per call")
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
    device = device or kernels.default_device()
    reduction = make_reduction(mode, splits, seed, granularity, precision, accumulate)
    rows = reveal_runs(target, k, calls, repeats, reduction, backend, dtype, assume_accumulate, device)
    label = reduction.describe() if target == "kernels" else f"{target} {dtype}"
    trees = sorted({row["tree"] for row in rows})
    text = format_table(rows, [("call", "call"), ("run", "run"), ("consistent", "consistent"),
                               ("same as run 0", "same_as_first_run"), ("seconds", "seconds")])
    text += f"\n\n{label}, K={k}, on {backend if target == 'kernels' else device}: {len(trees)} distinct tree(s)\n"
    text += "\n".join(f"  call {row['call']} run {row['run']}: {row['tree']}" for row in rows)
    emit({"target": target, "reduction": label, "k": k, "reveals": rows}, text, json_path)


@cli.command()
@click.option("--ops", type=CommaList(OPS), default=",".join(OPS), show_default=True)
@click.option("--shape", default=None, help="shape for a single op (default: a small shape per op)")
@click.option("--modes", type=CommaList(MODES), default="fixed,splitk,atomic", show_default=True)
@click.option("--precisions", type=CommaList(KERNEL_PRECISIONS), default="fp32,tf32,fp16,bf16", show_default=True)
@click.option("--accumulates", type=CommaList(KERNEL_ACCUMULATES), default="fp32", show_default=True)
@click.option("--splits", type=int, default=8, show_default=True, help="chunks for splitk/atomic")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="element", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="fp32", show_default=True)
@click.option("--backend", type=click.Choice(kernels.BACKENDS), default="auto", show_default=True)
@click.option("--data-seed", type=int, default=0, show_default=True)
@device_option
@json_option
def noise(ops, shape, modes, precisions, accumulates, splits, granularity, repeats, dtype, backend, data_seed,
          device, json_path):
    """Error against float64 (ULPs, relative) and run-to-run spread per op, mode and precision."""
    device = device or kernels.default_device()
    rows = noise_rows(ops, shape, modes, precisions, accumulates, splits, granularity, repeats,
                      check_dtype_name(dtype), backend, data_seed, device)
    columns = [("op", "op"), ("shape", "shape"), ("reduction", "reduction"), ("ULP med", "ulp_median"),
               ("ULP p99", "ulp_p99"), ("ULP max", "ulp_max"), ("rel med", "rel_median"), ("rel p99", "rel_p99"),
               ("rel max", "rel_max"), ("runs differ", "spread_frac"), ("run ULP max", "spread_ulp")]
    text = (f"error vs float64 (ULPs of {dtype} to the rounded reference; relative) and spread over "
            f"{repeats} calls, backend {backend}, {describe_device(device_info())}\n" + format_table(rows, columns))
    emit({"backend": backend, "dtype": dtype, "repeats": repeats, "rows": rows}, text, json_path)


@cli.command()
@setup_options
@reduction_options
@roles_option
@click.option("--runs", type=int, default=2, show_default=True)
@click.option("--all-rows/--nondeterministic-only", default=True, show_default=True)
@device_option
@json_option
def audit(net, net_option, batch, image_size, data_seed, mode, splits, seed, granularity, precision, accumulate,
          backend, roles, runs, all_rows, device, json_path):
    """Run every op of a training step twice on the same inputs; list the bitwise non-deterministic ones."""
    device = device or kernels.default_device()
    policy = kernels.Policy(**{role: make_reduction(mode, splits, seed, granularity, precision, accumulate)
                               for role in roles})
    setup = make_setup(net, net_option, batch, image_size, data_seed)
    images, labels = training_batch(setup, 0, device)
    rows = run_audit(build_model(setup, policy, backend, device), images, labels, runs=runs, seed=data_seed)
    shown = rows if all_rows else [row for row in rows if not row["deterministic"]]
    noisy = sorted({f"{row['op']} {row['role']}" for row in rows if not row["deterministic"]})
    text = (f"{net}, policy {policy.describe()}, backend {backend}, {describe_device(device_info())}\n"
            + format_table(shown, [("op", "op"), ("role", "role"), ("deterministic", "deterministic"),
                                   ("differing", "n_differ"), ("max ULP", "max_ulp")]))
    text += f"\n\nbitwise non-deterministic: {', '.join(noisy) if noisy else 'none'}"
    emit({"setup": setup.to_dict(), "policy": policy.to_dict(), "backend": backend, "device": device_info(),
          "rows": rows}, text, json_path)


@cli.command()
@click.option("--ops", type=CommaList(INVARIANCE_OPS), default=",".join(INVARIANCE_OPS), show_default=True,
              help="single ops measured besides --net")
@setup_options
@click.option("--modes", type=CommaList(("native", *MODES)), default="native,fixed,splitk,atomic",
              show_default=True, help="native: torch's kernels; a mode: everything under kernels.policy_mode")
@click.option("--splits", type=int, default=4, show_default=True, help="chunks of splitk and atomic")
@click.option("--sizes", default=None, help="other batch sizes, e.g. 1,4,32 [1, batch/2, 2*batch]")
@device_option
@json_option
def invariance(ops, net, net_option, batch, image_size, data_seed, modes, splits, sizes, device, json_path):
    """Does row i of an output change, bit for bit, when the other rows or the batch size change?"""
    device = device or kernels.default_device()
    setup = make_setup(net, net_option, batch, image_size, data_seed)
    targets = {op: make_op(op, batch, data_seed, device) for op in ops}
    targets[f"{net} (eval)"] = (build_model(setup, None, "native", device).eval(), training_batch(setup, 0, device)[0])
    rows = invariance_rows(targets, mode_contexts(modes, splits),
                           sizes=None if sizes is None else [int(s) for s in sizes.split(",")])
    checks = [(check, check) for check in dict.fromkeys(row["check"] for row in rows)]
    text = format_table(summary_rows(rows), [("target", "target"), ("mode", "context"), *checks,
                                             ("first differing layer", "first_layer")])
    text += "\n\nrows differing / rows checked of each output, against the batch itself under the same mode"
    emit({"setup": setup.to_dict(), "splits": splits, "device": device_info(), "rows": rows}, text, json_path)


@cli.command()
@click.option("--backend", type=click.Choice(collectives.BACKENDS), default=None, help="[nccl with GPUs, else gloo]")
@click.option("--world-sizes", default="2,3", show_default=True, help="ranks per process group")
@click.option("--sizes", default="1000,100000", show_default=True, help="message lengths in elements")
@click.option("--dtypes", type=CommaList(collectives.DTYPES), default="fp32,fp16", show_default=True)
@click.option("--runs", type=int, default=2, show_default=True, help="fresh process groups per setting")
@json_option
def collective(backend, world_sizes, sizes, dtypes, runs, json_path):
    """Sums of all_reduce / reduce_scatter bit for bit: runs, sizes, world sizes, dtypes, NCCL_ALGO/PROTO."""
    record = collectives.collective_probe(backend, collectives.int_list(world_sizes, "--world-sizes"),
                                          collectives.int_list(sizes, "--sizes"), dtypes, runs,
                                          echo=lambda line: click.echo(line, err=True))
    emit(record, collectives.collective_text(record), json_path)


@cli.command(name="fingerprint")
@click.option("--out", "out_path", type=OutputPath(), required=True, help="JSON file to write")
@device_option
def fingerprint_command(out_path, device):
    """Fingerprints of the fixed, seeded suite (every op and mode, and short training runs)."""
    result = run_suite(device, progress=lambda name: click.echo(f"  {name}", err=True))
    rows = [{"entry": name, "backend": entry["backend"], "fingerprint": entry["fingerprint"][:16]}
            for name, entry in result["entries"].items()]
    text = f"{describe_device(result['device'])}\n" + format_table(
        rows, [("entry", "entry"), ("backend", "backend"), ("sha256 (first 16)", "fingerprint")])
    emit(result, text, out_path)


@cli.command(name="compare")
@click.argument("file_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("file_b", type=click.Path(exists=True, dir_okay=False))
@click.option("--differing-only/--all-entries", default=False, show_default=True)
@json_option
def compare_command(file_a, file_b, differing_only, json_path):
    """Which fingerprint entries of two files (from two GPUs, say) match bit for bit."""
    a, b = (load_suite(path) for path in (file_a, file_b))
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
