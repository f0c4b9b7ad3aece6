"""Repeatability: run the same computation several times and say which bits differ, and from when.

`repeat_op` repeats one op on the same inputs; `compare_runs` compares training runs given as
their losses and the state after every step (see nets.workloads.train), naming the first step
after which two runs' states differ.
"""
from __future__ import annotations

import kernels

from .compare import compare, compare_dicts
from .fingerprint import fingerprint
from .ops import make_inputs, run_op


def repeat_op(op: str, shape, reduction, backend: str, runs: int, replay: bool, data_seed: int, dtype,
              device) -> dict:
    """Run `op` `runs` times on one seeded input; each later run compared to the first.

    With `replay` every run restarts the splitk call numbers at 0 (same orders); without it the
    runs continue one counter, as successive calls in a program do.
    """
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


def compare_runs(results: list[dict]) -> dict:
    """Runs {"losses", "states"} compared to the first: a row per run, and every differing tensor."""
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
    return {"losses": [r["losses"] for r in results], "runs": rows, "differing_tensors": tensors}
