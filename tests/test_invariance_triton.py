"""The Triton kernels' fixed mode is batch-invariant by construction; checked without a GPU.

A row of a GEMM (a batch entry of a linear layer) or an image of a convolution (its columns of
the forward GEMM) is summed over K in an order set by BLOCK_K, the chunk bounds and the walk
through each chunk, none of which depends on M or on the batch; the output tile, which does,
only shares the output elements out among programs. Two checks:

  * under the interpreter (one fixed 32x32x32 config), the rows of a batch equal, bit for bit,
    the rows of any sub-batch;
  * the launch configs the runtime would compile on a GPU (kernels.aot_variants, recorded on
    meta tensors in a process without the interpreter) keep every parameter but the tile
    across batch sizes, and the compiled sm_80 / sm_90 code of each tile uses the same matrix
    instruction K width (or FMA in K order for fp32).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.interpreter
@pytest.mark.parametrize("precision,splits", [("fp32", 1), ("fp32", 3), ("fp16", 2)])
def test_gemm_rows_do_not_depend_on_the_batch_under_the_interpreter(precision, splits, generator):
    a, b = torch.randn(40, 70, generator=generator), torch.randn(70, 24, generator=generator)
    reduction = kernels.Reduction("fixed", splits=splits, precision=precision)
    full = kernels.matmul(a, b, reduction, backend="interpret")
    for rows in (1, 7, 33):
        part = kernels.matmul(a[:rows], b, reduction, backend="interpret")
        assert torch.equal(part, full[:rows]), f"{rows} rows differ from the same rows of 40"


@pytest.mark.interpreter
def test_conv_images_do_not_depend_on_the_batch_under_the_interpreter(generator):
    x, w = torch.randn(3, 4, 6, 6, generator=generator), torch.randn(5, 4, 3, 3, generator=generator)
    reduction = kernels.Reduction("fixed", splits=2)
    full = kernels.conv2d(x, w, padding=1, policy=reduction, backend="interpret")
    assert torch.equal(kernels.conv2d(x[:1], w, padding=1, policy=reduction, backend="interpret"), full[:1])


LAUNCH_CONFIGS = r"""
import json, re, sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import Reduction
from kernels.aot import ARCHS, WARP_SIZE, specialize
from kernels.aot_variants import conv_call_variants, gemm_call_variants
from kernels.conv_triton import ConvProblem

FORMATS = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TILE = ("BLOCK_M", "BLOCK_N")

def meta(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")

COMPILED = {}

def instructions(variant, arch):
    # the matrix instructions' (family, K width), or FMA, of the compiled kernel (once per specialization)
    signature, constexprs, attrs = specialize(variant)
    key = repr((variant.kernel.__name__, signature, constexprs, attrs, variant.num_warps, variant.num_stages, arch))
    if key not in COMPILED:
        COMPILED[key] = compiled_instructions(variant, arch, signature, constexprs, attrs)
    return COMPILED[key]

def compiled_instructions(variant, arch, signature, constexprs, attrs):
    ptx = triton.compile(ASTSource(fn=variant.kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                         target=GPUTarget("cuda", arch, WARP_SIZE),
                         options={"num_warps": variant.num_warps, "num_stages": variant.num_stages}).asm["ptx"]
    found = {(family, k) for family, k in re.findall(r"\b(wgmma|mma)\.[a-z_.]*?m\d+n\d+k(\d+)", ptx)}
    return sorted(found) if found else (["fma"] if re.search(r"\bfma\.rn\.f32", ptx) else [])

result = {}
for precision, dtype in FORMATS.items():
    reduction = Reduction("fixed", splits=2, precision=precision)
    launches = {f"gemm M={m}": gemm_call_variants(meta(m, 512, dtype=dtype), meta(512, 384, dtype=dtype), reduction)
                for m in (1, 8192)}
    launches.update({f"conv forward batch={n}": conv_call_variants(
        "forward", ConvProblem(n, 32, 16, 16, 64, (3, 3), (1, 1), (1, 1)), dtype, reduction) for n in (1, 256)})
    for name, variants in launches.items():
        for variant in variants:
            args = {k: v for k, v in variant.args.items() if k in ("K", "SPLITS")}
            entry = {"launch": name, "kernel": variant.kernel.__name__, "args": args,
                     "fixed": {k: v for k, v in variant.constexprs.items() if k not in TILE},
                     "tile": [variant.constexprs.get(k) for k in TILE]}
            if "BLOCK_K" in variant.constexprs:
                entry["instructions"] = {arch: instructions(variant, arch) for arch in ARCHS}
            result.setdefault(precision, []).append(entry)
print(json.dumps(result))
"""


@pytest.mark.slow
def test_fixed_launch_configs_and_instruction_widths_never_depend_on_the_batch():
    done = subprocess.run([sys.executable, "-c", LAUNCH_CONFIGS], cwd=ROOT, env=dict(os.environ, TRITON_INTERPRET="0"),
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    for precision, entries in json.loads(done.stdout).items():
        for family in ("gemm", "conv"):
            kernels_of = {}
            for entry in (e for e in entries if e["launch"].startswith(family)):
                kernels_of.setdefault(entry["kernel"], []).append(entry)
            for kernel, launches in kernels_of.items():
                where = f"{precision} {family} {kernel}"
                assert len({json.dumps(e["fixed"], sort_keys=True) for e in launches}) == 1, where
                if "instructions" in launches[0]:
                    assert len({json.dumps(e["instructions"]) for e in launches}) == 1, where
        gemm_tiles = {tuple(e["tile"]) for e in entries if e["launch"].startswith("gemm") and e["tile"][0]}
        assert len(gemm_tiles) > 1, f"{precision}: the batch sizes chosen should reach several tiles"
