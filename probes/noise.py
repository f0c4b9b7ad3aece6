"""How large a reduction's rounding noise is: error against float64, and spread between runs.

For one op, shape and Reduction:
  - error: each output element against the float64 reference, as the ULP distance (in the
    output dtype) to the correctly rounded reference, and as the relative error
    |out - ref| / |ref| (elements with ref = 0 are left out of the relative error);
  - spread: the op run `repeats` times on the same inputs (splitk calls take call numbers
    0, 1, ... of a fresh counter, so each run has its own, replayable order; atomic runs race):
    the fraction of elements that differ bitwise from the first run in any later run, and the
    largest ULP distance to it.
`noise_rows` measures a grid of ops x modes x precisions x accumulation formats, a row each.
"""
from __future__ import annotations

import torch

import kernels

from .compare import compare
from .ulp import raw_bits, ulp_distance
from .ops import DEFAULT_SHAPES, make_inputs, parse_shape, reduction_length, reference_op, run_op

QUANTILES = {"median": 0.5, "p99": 0.99, "max": 1.0}


def _quantiles(values: torch.Tensor) -> dict:
    """Nearest-rank median, 99th percentile and maximum of the non-NaN values."""
    values = values[~torch.isnan(values)].to(torch.float64)
    if values.numel() == 0:
        return {name: None for name in QUANTILES}
    ordered = torch.sort(values).values
    last = ordered.numel() - 1
    return {name: float(ordered[round(q * last)]) for name, q in QUANTILES.items()}


def error_statistics(output: torch.Tensor, reference: torch.Tensor) -> dict:
    """ULP and relative error quantiles of `output` against a float64 `reference`."""
    output = output.detach().cpu()
    reference = reference.detach().cpu().to(torch.float64)
    ulps = ulp_distance(output, reference.to(output.dtype))
    nonzero = reference != 0
    relative = (output.double() - reference).abs()[nonzero] / reference.abs()[nonzero]
    return {"ulp": _quantiles(ulps.flatten()), "rel": _quantiles(relative.flatten())}


def run_spread(outputs: list[torch.Tensor]) -> dict:
    """Bitwise spread of repeated outputs around the first one."""
    first = raw_bits(outputs[0].cpu())
    differing = torch.zeros(first.shape, dtype=torch.bool)
    max_ulp = 0.0
    for other in outputs[1:]:
        differing |= raw_bits(other.cpu()) != first
        max_ulp = max(max_ulp, compare(outputs[0], other).max_ulp or 0.0)
    return {"frac_differ": float(differing.float().mean()), "max_ulp": max_ulp, "runs": len(outputs)}


def noise_magnitude(op: str, shape, reduction, backend: str = "auto", repeats: int = 3, seed: int = 0,
                    dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    """Error against float64 and run-to-run spread of one op under one Reduction (see module doc)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} is not allowed; use an int >= 1")
    inputs = make_inputs(op, shape, seed, dtype, device)
    with kernels.counting(kernels.CallCounter()):  # calls 0, 1, ...: the table is replayable
        outputs = [run_op(op, shape, inputs, reduction, backend) for _ in range(repeats)]
    return {
        "op": op,
        "shape": str(shape),
        "reduction": reduction.describe(),
        "backend": backend,
        "dtype": str(dtype).replace("torch.", ""),
        "error": error_statistics(outputs[0], reference_op(op, shape, inputs)),
        "spread": run_spread(outputs),
    }


def noise_rows(ops, shape: str | None, modes, precisions, accumulates, splits: int, granularity: str,
               repeats: int, dtype: torch.dtype, backend: str = "auto", seed: int = 0, device="cpu") -> list[dict]:
    """One row per op, mode, precision and accumulation format: error quantiles and run-to-run spread.

    `shape` (text, see ops.parse_shape) applies to a single op; by default each op takes its
    DEFAULT_SHAPES entry. splitk and atomic use `splits` chunks, or fewer where K is shorter.
    """
    if shape and len(ops) != 1:
        raise ValueError("a shape needs exactly one op")
    rows = []
    for op in ops:
        op_shape = parse_shape(op, shape) if shape else DEFAULT_SHAPES[op]
        for mode in modes:
            for precision in precisions:
                for accumulate in accumulates:
                    chunks = 1 if mode == "fixed" else min(splits, reduction_length(op, op_shape))
                    reduction = kernels.Reduction(mode=mode, splits=chunks, granularity=granularity,
                                                  precision=precision, accumulate=accumulate)
                    result = noise_magnitude(op, op_shape, reduction, backend, repeats, seed, dtype, device)
                    rows.append({"op": op, "shape": result["shape"], "reduction": result["reduction"],
                                 **{f"ulp_{q}": v for q, v in result["error"]["ulp"].items()},
                                 **{f"rel_{q}": v for q, v in result["error"]["rel"].items()},
                                 "spread_frac": result["spread"]["frac_differ"],
                                 "spread_ulp": result["spread"]["max_ulp"]})
    return rows
