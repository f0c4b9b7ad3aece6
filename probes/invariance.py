"""Batch invariance: does row i of an output change, bit for bit, when the rest of its batch does?

`batch_invariance(fn, x)` evaluates fn on the batch x and on variations of it, and compares the
outputs of a few checked rows bit for bit (and in ULPs):

    repeat        the same batch again (tells run-to-run non-determinism apart)
    other rows    every unchecked row replaced by a fresh one
    batch S       the first S rows of x, or x followed by S - B fresh rows when S > B

Each evaluation runs under `context()` (e.g. `lambda: kernels.policy_mode(policy)`; nothing by
default, i.e. torch's own kernels) and under a fresh kernels call counter, so a seeded splitk
order replays its call numbers. When fn is a torch module, the output of each submodule whose
first dimension is the batch is recorded too, and the first one (in the order the modules
finish in the reference pass) where a checked row differs is named, even when the difference
does not reach the output. Fresh rows are drawn from a seeded generator: normal with x's mean
and standard deviation for floating x, uniform over x's range for integer x (token ids).

`OPS` are seeded single ops built from torch functions (what the policy mode intercepts):
their batch dimension becomes M of a GEMM (linear, matmul), N of a convolution's GEMM, or the
batch of a bmm (attention).
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .compare import compare


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _evaluate(fn, x: torch.Tensor, context) -> tuple[torch.Tensor, list]:
    """fn(x) and [(module name, its output)], in the order modules finish, for the submodules whose
    output has x's batch first."""
    outputs = []
    handles = []
    if isinstance(fn, nn.Module):
        def record(name):
            def hook(module, args, output):
                out = _first_tensor(output)
                if out is not None and out.dim() > 0 and out.shape[0] == x.shape[0]:
                    outputs.append((name, out.detach().clone()))
            return hook
        handles = [module.register_forward_hook(record(name)) for name, module in fn.named_modules() if name]
    try:
        with torch.no_grad(), context(), kernels.counting():
            out = fn(x).detach().clone()
    finally:
        for handle in handles:
            handle.remove()
    return out, outputs


def _fresh_rows(x: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` new rows like x's: normal with its mean and std, or integers over its range."""
    shape = (count, *x.shape[1:])
    if x.is_floating_point():
        values = torch.randn(shape, generator=generator, dtype=torch.float64)
        return (values * x.double().std() + x.double().mean()).to(x)
    return torch.randint(int(x.min()), int(x.max()) + 1, shape, generator=generator).to(x)


def _variations(x: torch.Tensor, rows: list[int], sizes: list[int], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    others = [i for i in range(x.shape[0]) if i not in rows]
    neighbours = x.clone()
    neighbours[others] = _fresh_rows(x, len(others), generator)
    variations = {"repeat": x, "other rows": neighbours}
    for size in sizes:
        extra = _fresh_rows(x, max(size - x.shape[0], 0), generator)
        variations[f"batch {size}"] = torch.cat([x[:size], extra])
    return variations


def _row_differences(ref: torch.Tensor, other: torch.Tensor, rows: list[int]) -> tuple[int, float]:
    """(rows whose bits differ, max ULP over the checked rows)."""
    differ, max_ulp = 0, 0.0
    for row in rows:
        if row < other.shape[0]:
            comparison = compare(ref[row], other[row])
            differ += comparison.n_differ > 0
            max_ulp = max(max_ulp, comparison.max_ulp or 0.0)
    return differ, max_ulp


def _first_layer(ref_outputs: list, other_outputs: list, rows: list[int]) -> str | None:
    seen = dict(other_outputs)
    for name, out in ref_outputs:
        other = seen.get(name)
        if other is not None and other.shape[1:] == out.shape[1:] and _row_differences(out, other, rows)[0]:
            return name
    return None


def batch_invariance(fn, x: torch.Tensor, *, context=nullcontext, rows=None, sizes=None, seed: int = 0) -> dict:
    """Rows of fn(x) compared with the same rows of fn on variations of x (see the module doc).

    rows:  the checked row indices (default: the first, middle and last row).
    sizes: the other batch sizes (default: 1, B // 2 and 2B, those >= 1 and != B).
    seed:  seeds the fresh rows.
    Returns {"batch", "rows", "deterministic", "invariant", "checks": [{"check", "rows_checked",
    "rows_differ", "max_ulp", "first_layer"}, ...]}; "invariant" covers every check but repeat.
    """
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] < 1:
        raise ValueError("x must be a tensor with a batch dimension of at least one row")
    batch = x.shape[0]
    rows = sorted({0, batch // 2, batch - 1}) if rows is None else sorted(set(rows))
    if not rows or min(rows) < 0 or max(rows) >= batch:
        raise ValueError(f"rows={rows} is not allowed; each checked row must be in [0, {batch})")
    sizes = sorted({s for s in (1, batch // 2, 2 * batch) if s >= 1 and s != batch}) if sizes is None else sizes
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes={sizes} is not allowed; batch sizes are ints >= 1")
    ref, ref_outputs = _evaluate(fn, x, context)
    checks = []
    for check, variant in _variations(x, rows, sizes, seed).items():
        out, outputs = _evaluate(fn, variant, context)
        checked = [row for row in rows if row < variant.shape[0]]
        differ, max_ulp = _row_differences(ref, out, checked)
        checks.append({"check": check, "rows_checked": len(checked), "rows_differ": differ, "max_ulp": max_ulp,
                       "first_layer": _first_layer(ref_outputs, outputs, checked)})
    return {"batch": batch, "rows": rows,
            "deterministic": checks[0]["rows_differ"] == 0,
            "invariant": all(c["rows_differ"] == 0 for c in checks[1:]),
            "checks": checks}


def mode_contexts(modes, splits: int) -> dict:
    """name -> context factory: "native" runs torch's kernels, a mode runs kernels.policy_mode with
    that mode in every role (fixed in one chunk, splitk and atomic in `splits`)."""
    return {mode: nullcontext if mode == "native" else
            partial(kernels.policy_mode, kernels.Reduction(mode, splits=None if mode == "fixed" else splits))
            for mode in modes}


def invariance_rows(targets: dict, contexts: dict, *, sizes=None) -> list[dict]:
    """batch_invariance of every target (name -> (fn, x)) under every context (name -> factory).

    One row per target, context and check: {"target", "context", "check", "rows_checked",
    "rows_differ", "max_ulp", "first_layer", "deterministic", "invariant"}.
    """
    rows = []
    for target, (fn, x) in targets.items():
        for context, factory in contexts.items():
            result = batch_invariance(fn, x, context=factory, sizes=sizes)
            rows += [{"target": target, "context": context, **check, "deterministic": result["deterministic"],
                      "invariant": result["invariant"]} for check in result["checks"]]
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """invariance_rows folded to one row per target and context: each check as "differing/checked"
    (with the max ULP when rows differ), and the first differing layer of any check."""
    folded = {}
    for row in rows:
        entry = folded.setdefault((row["target"], row["context"]),
                                  {"target": row["target"], "context": row["context"], "first_layer": None})
        ulp = f" ({row['max_ulp']:g} ULP)" if row["rows_differ"] else ""
        entry[row["check"]] = f"{row['rows_differ']}/{row['rows_checked']}{ulp}"
        entry["first_layer"] = entry["first_layer"] or row["first_layer"]
    return list(folded.values())


def _linear(batch, draw):
    w, b = draw(48, 96), draw(48)
    return (lambda x: F.linear(x, w, b)), draw(batch, 96)


def _matmul(batch, draw):
    w = draw(64, 40)
    return (lambda x: torch.matmul(x, w)), draw(batch, 12, 64)


def _conv2d(batch, draw):
    w = draw(16, 8, 3, 3)
    return (lambda x: F.conv2d(x, w, padding=1)), draw(batch, 8, 10, 10)


def _attention(batch, draw):
    return (lambda x: F.scaled_dot_product_attention(x, x, x)), draw(batch, 2, 12, 16)


OPS = {"linear": _linear, "matmul": _matmul, "conv2d": _conv2d, "attention": _attention}


def make_op(name: str, batch: int, seed: int = 0, device="cpu"):
    """(fn, x): the seeded op `name` of OPS and an input batch of `batch` rows, on `device`."""
    if name not in OPS:
        raise ValueError(f"op={name!r} is not allowed; choose one of {', '.join(map(repr, OPS))}")
    generator = torch.Generator().manual_seed(seed)
    return OPS[name](batch, lambda *shape: torch.randn(shape, generator=generator).to(device))
