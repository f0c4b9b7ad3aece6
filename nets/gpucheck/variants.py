"""The Triton kernel variants each part of the GPU check launches, derived without a GPU.

Each launch is described by meta tensors of the shapes, dtypes and strides the part uses, and
kernels.aot_variants turns it into the variants the launcher would compile for it (the same
launch-planning code the runtime uses), so a CPU test can compile exactly these for sm_80/sm_90
and the compile part can fill the GPU's Triton cache with them in parallel.
"""
from __future__ import annotations

import torch

import kernels
from kernels.aot_variants import conv_call_variants, gemm_call_variants, unique
from kernels.conv_triton import ConvProblem

from .workloads import INPUT_DTYPES, NUM_CLASSES, Plan

COMPILE_SECONDS = 2  # one variant on one core (an expectation; ptxas dominates for fp32 FMA tiles)


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _problem(shape) -> ConvProblem:
    return ConvProblem(shape.batch, shape.c_in, shape.size, shape.size, shape.c_out, (shape.kernel,) * 2,
                       (shape.stride,) * 2, (shape.padding,) * 2)


def _conv(shape, role, dtype, reduction):
    return conv_call_variants(role, _problem(shape), dtype, reduction)


def _gemm(m, n, k, dtype, reduction, b_transposed=False):
    b = _meta(n, k, dtype=dtype).t() if b_transposed else _meta(k, n, dtype=dtype)
    return gemm_call_variants(_meta(m, k, dtype=dtype), b, reduction)


def _network_variants(plan: Plan, policies) -> list:
    """Every conv role and the classifier's three GEMMs under each policy (a training step)."""
    variants = []
    width = plan.conv_layers()[-1].shape.c_out
    for policy in policies:
        for layer in plan.conv_layers():
            for role in kernels.ROLES:
                variants += _conv(layer.shape, role, torch.float32, getattr(policy, role))
        batch = plan.batch
        variants += _gemm(batch, NUM_CLASSES, width, torch.float32, policy.forward, b_transposed=True)
        variants += _gemm(batch, width, NUM_CLASSES, torch.float32, policy.input_grad)
        variants += gemm_call_variants(_meta(batch, NUM_CLASSES).t(), _meta(batch, width), policy.weight_grad)
    return variants


def part_variants(plan: Plan) -> dict[str, list]:
    """Part name -> the distinct kernel variants it launches; "compile" holds all of them."""
    from .bench import step_policies
    from .parts import SYMMETRY_RUNS

    gemm = [v for _, (m, n, k), mode, precision, inputs in plan.gemm_rows()
            for v in _gemm(m, n, k, INPUT_DTYPES[inputs], plan.reduction(mode, precision))]
    conv = [v for layer, dtype, role, mode in plan.conv_rows()
            for v in _conv(layer.shape, role, INPUT_DTYPES[dtype], plan.reduction(mode, dtype))]
    wgrad = next(layer for layer in plan.conv_layers() if layer.count > 1).shape
    determinism = [v for reduction in (plan.reduction("fixed"), plan.reduction("splitk"), plan.reduction("atomic"),
                                       plan.reduction("atomic", accumulate="fp16"))
                   for v in _conv(wgrad, "weight_grad", torch.float32, reduction)]
    step = _network_variants(plan, [policy for policy in step_policies(plan).values() if policy is not None])
    symmetry = _network_variants(plan, [kernels.Policy.uniform(plan.reduction(options["reduction"]))
                                        for options in SYMMETRY_RUNS.values() if options["reduction"] != "native"])
    parts = {"determinism": determinism, "gemm": gemm, "conv": conv, "step": step, "symmetry": symmetry}
    parts = {name: unique(variants) for name, variants in parts.items()}
    parts["compile"] = unique([v for variants in parts.values() for v in variants])
    return parts


def plan_variants(plan: Plan) -> list:
    """Every distinct kernel variant the check launches on `plan`."""
    return part_variants(plan)["compile"]
