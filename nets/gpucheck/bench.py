"""The GPU check's timed parts: GEMMs against cuBLAS, ConstNet-16-10's conv layers against cuDNN,
a full training step against native, and repeat counts of atomic and fixed results.

Every timed row carries the max relative error of its result against a float64 reference
(probes.kernel_bench), computed on the device from the same inputs. Each part takes a sink for
its rows (nets.gpucheck.report.PartSink) and writes a row as soon as it is measured.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F

import kernels
from probes.kernel_bench import (conv_role, distinct_results, max_relative_error, measure,
                                 reference_numerics)
from probes.timing import median_ms

from ..training.step import make_optimizer, train_step
from .workloads import CONV_DTYPES, INPUT_DTYPES, NUM_CLASSES, Plan


def _draw(generator, *size, dtype, device, scale=1.0):
    return (torch.randn(*size, generator=generator) * scale).to(device=device, dtype=dtype)


def gemm_part(sink, device: torch.device, plan: Plan) -> None:
    """4096^3 fixed per precision, and ConstNet's weight-gradient shapes under splitk and atomic."""
    generator = torch.Generator().manual_seed(0)
    torch_rows = {}
    for case, (m, n, k), mode, precision, inputs in plan.gemm_rows():
        dtype = INPUT_DTYPES[inputs]
        a, b = _draw(generator, m, k, dtype=dtype, device=device), _draw(generator, k, n, dtype=dtype, device=device)
        expected = a.double() @ b.double()
        reduction = plan.reduction(mode, precision)
        with kernels.counting(kernels.CallCounter()):
            ours = measure(lambda: kernels.matmul(a, b, reduction), expected, device)
        key = (case, precision)
        if key not in torch_rows:  # cuBLAS on operands already in the precision's own format
            a_own, b_own = a.to(INPUT_DTYPES[precision]), b.to(INPUT_DTYPES[precision])
            with reference_numerics(tf32=precision == "tf32"):
                torch_rows[key] = measure(lambda: torch.matmul(a_own, b_own), expected, device)
        theirs = torch_rows[key]
        sink.add({"case": case, "M": m, "N": n, "K": k, "mode": mode, "splits": reduction.splits,
                  "precision": precision, "inputs": inputs, "ours_ms": ours["ms"], "cublas_ms": theirs["ms"],
                  "ours_tflops": round(2 * m * n * k / ours["ms"] / 1e9, 2),
                  "cublas_tflops": round(2 * m * n * k / theirs["ms"] / 1e9, 2),
                  "time_ratio": round(ours["ms"] / theirs["ms"], 3),
                  "ours_max_rel_err": ours["error"], "cublas_max_rel_err": theirs["error"]})


def _conv_inputs(shape, dtype, device, generator):
    x = _draw(generator, shape.batch, shape.c_in, shape.size, shape.size, dtype=dtype, device=device)
    weight = _draw(generator, shape.c_out, shape.c_in, shape.kernel, shape.kernel, dtype=dtype, device=device,
                   scale=(shape.c_in * shape.kernel**2) ** -0.5)
    dy = _draw(generator, shape.batch, shape.c_out, shape.out_size, shape.out_size, dtype=dtype, device=device)
    return x, weight, dy


def _torch_conv(shape):
    return partial(F.conv2d, stride=shape.stride, padding=shape.padding)


def _our_conv(shape, policy):
    return lambda x, weight: kernels.conv2d(x, weight, stride=shape.stride, padding=shape.padding, policy=policy)


def _role_policy(role: str, reduction: kernels.Reduction) -> kernels.Policy:
    return kernels.Policy(**{role: reduction})


def conv_part(sink, device: torch.device, plan: Plan) -> None:
    """Every distinct conv layer x dtype x role x mode, against cuDNN's best algorithm."""
    generator = torch.Generator().manual_seed(0)
    for layer in plan.conv_layers():
        shape = layer.shape
        for dtype_name in CONV_DTYPES:
            x, weight, dy = _conv_inputs(shape, INPUT_DTYPES[dtype_name], device, generator)
            for role in kernels.ROLES:
                expected = conv_role(_torch_conv(shape), role, x.double(), weight.double(), dy.double())()
                with reference_numerics(tf32=False):
                    theirs = measure(conv_role(_torch_conv(shape), role, x, weight, dy), expected, device)
                for mode in kernels.MODES:
                    reduction = plan.reduction(mode, dtype_name)
                    ours_fn = conv_role(_our_conv(shape, _role_policy(role, reduction)), role, x, weight, dy)
                    with kernels.counting(kernels.CallCounter()):
                        ours = measure(ours_fn, expected, device)
                    sink.add({"layer": layer.name, "layers": layer.count, "shape": str(shape), "role": role,
                              "dtype": dtype_name, "mode": mode, "splits": reduction.splits,
                              "ours_ms": ours["ms"], "cudnn_ms": theirs["ms"],
                              "time_ratio": round(ours["ms"] / theirs["ms"], 3),
                              "ours_max_rel_err": ours["error"], "cudnn_max_rel_err": theirs["error"]})


def determinism_part(sink, device: torch.device, plan: Plan) -> None:
    """Distinct bit patterns among plan.repeats calls of one ConstNet weight gradient (stage 1, 3x3)."""
    layer = next(layer for layer in plan.conv_layers() if layer.count > 1)
    shape = layer.shape
    x, weight, dy = _conv_inputs(shape, torch.float32, device, torch.Generator().manual_seed(1))
    cases = [("fixed", "1", plan.reduction("fixed"), False),
             ("splitk, calls replayed", "1", plan.reduction("splitk"), True),
             ("splitk, calls advancing", ">1", plan.reduction("splitk"), False),
             ("atomic fp32", "any", plan.reduction("atomic"), False),
             ("atomic fp16 accumulate", "any", plan.reduction("atomic", accumulate="fp16"), False)]
    for label, expect, reduction, replay in cases:
        fn = conv_role(_our_conv(shape, _role_policy("weight_grad", reduction)), "weight_grad", x, weight, dy)
        counter = kernels.CallCounter()

        def call(fn=fn, replay=replay, counter=counter):
            with kernels.counting(kernels.CallCounter() if replay else counter):
                return fn()

        distinct = distinct_results(call, plan.repeats)
        sink.add({"op": f"weight_grad {layer.name} {shape}", "reduction": label, "repeats": plan.repeats,
                  "distinct_bit_patterns": distinct, "expected": expect,
                  "ok": {"1": distinct == 1, ">1": distinct > 1}.get(expect, True)})
    for label, deterministic in (("native cuDNN (benchmark)", False), ("native cuDNN (deterministic)", True)):
        fn = conv_role(_torch_conv(shape), "weight_grad", x, weight, dy)
        with reference_numerics(tf32=False), _cudnn_deterministic(deterministic):
            distinct = distinct_results(fn, plan.repeats)
        sink.add({"op": f"weight_grad {layer.name} {shape}", "reduction": label, "repeats": plan.repeats,
                  "distinct_bit_patterns": distinct, "expected": "1" if deterministic else "any",
                  "ok": distinct == 1 or not deterministic})


@contextmanager
def _cudnn_deterministic(enabled: bool):
    """cuDNN's deterministic algorithms (benchmark off) inside the block, when `enabled`."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if enabled:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def step_policies(plan: Plan) -> dict:
    """The step part's policies: native, fixed everywhere, seeded weight-gradient noise, atomic everywhere."""
    return {"native": None, "fixed": kernels.Policy(),
            "splitk weight_grad": kernels.Policy(weight_grad=plan.reduction("splitk")),
            "atomic": kernels.Policy.uniform(plan.reduction("atomic"))}


def _gradients(model, images, labels) -> dict:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images).double(), labels).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def step_part(sink, device: torch.device, plan: Plan) -> None:
    """One SGD step of the ConstNet (He init), every conv/linear patched, against native."""
    generator = torch.Generator().manual_seed(2)
    images = _draw(generator, plan.batch, 3, plan.image, plan.image, dtype=torch.float32, device=device)
    labels = torch.randint(0, NUM_CLASSES, (plan.batch,), generator=generator).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = plan.constnet("he")
    expected = _gradients(copy.deepcopy(base).to(device).double(), images.double(), labels)
    native_ms = None
    for label, policy in step_policies(plan).items():
        model = copy.deepcopy(base).to(device)
        if policy is not None:
            kernels.patch(model, policy, example_input=images)
        with reference_numerics(tf32=False), kernels.counting(kernels.CallCounter()):
            gradients = _gradients(model, images, labels)
            error = max(max_relative_error(gradients[name], expected[name]) for name in expected)
            optimizer = make_optimizer(model, lr=1e-3, momentum=0.9, weight_decay=5e-4)
            ms = median_ms(lambda: train_step(model, optimizer, images, labels), device, 1, 3)
        native_ms = native_ms or ms
        sink.add({"policy": label, "batch": plan.batch, "step_ms": round(ms, 3),
                  "time_ratio": round(ms / native_ms, 3), "grad_max_rel_err": error})
