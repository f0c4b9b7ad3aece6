"""The fingerprint suite: a fixed, seeded workload whose output bits are compared across machines.

Entries (each a fingerprint of the result bits):
  kernels/<op>/<shape>/<reduction>   every op in every mode (fixed 1 split, fixed 4 splits,
                                     splitk 4 splits seed 0, atomic 4 splits) and operand
                                     precision (fp32, tf32, fp16, bf16; fp32 accumulation),
                                     on the device's kernel backend (triton on CUDA, emulate on CPU)
  native/<op>/<shape>/fp32           torch's own kernels (cuBLAS/cuDNN or CPU)
  train/<net>/<policy>               the state after a short ConstNet training run

Every entry replays splitk call numbers from 0, so fixed and splitk entries repeat their bits on
one machine. Across machines they match where the backend runs the same arithmetic in the same
order (the emulate backend on any CPU with the same torch; the Triton kernels where the compiled
instruction sequence is the same), which is what comparing two files tests; atomic entries and
torch's native kernels carry no such promise.
"""
from __future__ import annotations

import torch

import kernels
from probes.device import device_info
from probes.fingerprint import fingerprint
from probes.ops import OPS, ConvShape, MatmulShape, make_inputs, run_op

from .files import read_json_object
from .workloads import TrainingSetup, train

SUITE_SHAPES = {"matmul": MatmulShape(48, 96, 40), "conv_forward": ConvShape(2, 8, 12, 8),
                "conv_dgrad": ConvShape(2, 8, 12, 8), "conv_wgrad": ConvShape(2, 8, 12, 8)}
SUITE_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
SUITE_TRAINING = TrainingSetup(steps=3)
FORMAT_VERSION = 1


def suite_reductions():
    modes = [dict(mode="fixed", splits=1), dict(mode="fixed", splits=4), dict(mode="splitk", splits=4, seed=0),
             dict(mode="atomic", splits=4)]
    return [kernels.Reduction(precision=precision, **mode) for mode in modes for precision in SUITE_PRECISIONS]


def suite_policies():
    """(label, policy, backend kind) of the training entries."""
    fixed = kernels.Reduction()
    splitk = kernels.Reduction(mode="splitk", splits=4, seed=0)
    return [("fixed", kernels.Policy(), "kernels"),
            ("splitk-wgrad", kernels.Policy(fixed, fixed, splitk), "kernels"),
            ("native", kernels.Policy(), "native")]


def _op_entry(op: str, reduction, backend: str, device) -> str:
    shape = SUITE_SHAPES[op]
    inputs = make_inputs(op, shape, seed=0, device=device)
    with kernels.counting(kernels.CallCounter()):
        return fingerprint(run_op(op, shape, inputs, reduction, backend))


def run_suite(device=None, progress=None) -> dict:
    """{"format", "device", "kernel_backend", "entries": {name: {"fingerprint", "backend"}}}.

    `progress(name)` is called before each entry when given.
    """
    device = torch.device(device) if device else kernels.default_device()
    kernel_backend = "triton" if device.type == "cuda" else "emulate"
    jobs = []
    for op in OPS:
        for reduction in suite_reductions():
            jobs.append((f"kernels/{op}/{SUITE_SHAPES[op]}/{reduction.describe()}",
                         kernel_backend, lambda op=op, r=reduction: _op_entry(op, r, kernel_backend, device)))
        jobs.append((f"native/{op}/{SUITE_SHAPES[op]}/fp32", "native",
                     lambda op=op: _op_entry(op, kernels.Reduction(), "native", device)))
    for label, policy, kind in suite_policies():
        backend = kernel_backend if kind == "kernels" else "native"
        jobs.append((f"train/{SUITE_TRAINING.net}/{label}", backend,
                     lambda p=policy, b=backend: fingerprint(train(SUITE_TRAINING, p, b, device)["states"][-1])))
    entries = {}
    for name, backend, job in jobs:
        if progress is not None:
            progress(name)
        entries[name] = {"fingerprint": job(), "backend": backend}
    return {"format": FORMAT_VERSION, "device": device_info(), "kernel_backend": kernel_backend,
            "training": SUITE_TRAINING.to_dict(), "entries": entries}


def load_suite(path) -> dict:
    """A fingerprint file (run_suite's result as JSON); ValueError naming the file when it is not one."""
    suite = read_json_object(path)
    entries = suite.get("entries")
    if not isinstance(entries, dict) or not isinstance(suite.get("device", {}), dict) or not all(
            isinstance(entry, dict) and {"fingerprint", "backend"} <= entry.keys() for entry in entries.values()):
        raise ValueError(f"{path} is not a fingerprint file: it needs an \"entries\" object of "
                         "{\"fingerprint\", \"backend\"} records (and a \"device\" object)")
    return suite


def compare_suites(a: dict, b: dict) -> list[dict]:
    """Per entry of either file: {"entry", "a", "b", "status"} with status match / differ / only in a / only in b."""
    rows = []
    entries_a, entries_b = a.get("entries", {}), b.get("entries", {})
    for name in sorted(set(entries_a) | set(entries_b)):
        left, right = entries_a.get(name), entries_b.get(name)
        if left is None or right is None:
            status = "only in a" if right is None else "only in b"
        else:
            status = "match" if left["fingerprint"] == right["fingerprint"] else "differ"
        rows.append({"entry": name, "status": status,
                     "a": left and left["fingerprint"], "b": right and right["fingerprint"],
                     "backend_a": left and left["backend"], "backend_b": right and right["backend"]})
    return rows
