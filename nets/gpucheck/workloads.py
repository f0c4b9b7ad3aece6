"""What the GPU check runs: a network's distinct conv layers, GEMM shapes and reductions.

A `Plan` sizes every part: `GPU_PLAN` is the check itself (ConstNet-16-10 at batch 128 on
3x32x32 images, 4096^3 GEMMs); `TINY_PLAN` runs the same code on a CPU in seconds, for tests.
Everything here is plain data computed on the CPU without CUDA, so a dry run can list it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from probes.ops import ConvShape

from ..registry import build

GEMM_PRECISIONS = ("fp16", "bf16", "tf32", "fp32")
CONV_DTYPES = ("fp32", "fp16")  # each with its own operand precision and fp32 accumulation
INPUT_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NUM_CLASSES = 10


@dataclass(frozen=True)
class ConvLayer:
    """One distinct conv geometry of the network: the first layer that has it, and how many do."""

    name: str
    shape: ConvShape
    count: int


@dataclass(frozen=True)
class Plan:
    depth: int = 16
    widen: int = 10
    batch: int = 128
    image: int = 32
    square: int = 4096
    splits: int = 8
    repeats: int = 20
    symmetry_steps: int = 128
    capped: bool = True  # each part within its cap (nets.gpucheck.parts.PARTS); else only the budget

    def reduction(self, mode: str, precision: str = "fp32", accumulate: str = "fp32") -> kernels.Reduction:
        """The check's reduction of a mode: one chunk when fixed, `splits` chunks otherwise."""
        return kernels.Reduction(mode=mode, splits=1 if mode == "fixed" else self.splits, precision=precision,
                                 accumulate=accumulate)

    def constnet(self, init: str = "he") -> torch.nn.Module:
        return build("constnet", depth=self.depth, widen=self.widen, init=init, num_classes=NUM_CLASSES)

    def conv_layers(self) -> list[ConvLayer]:
        """Every distinct conv geometry of the ConstNet on 3 x image x image inputs, in forward order."""
        with torch.device("meta"):  # shapes only: no memory, no init work
            model = self.constnet()
        seen: dict[ConvShape, list[str]] = {}

        def record(name):
            def hook(module, inputs):
                shape = ConvShape(self.batch, module.in_channels, module.out_channels, inputs[0].shape[-1],
                                  module.kernel_size[0], module.stride[0], module.padding[0])
                seen.setdefault(shape, []).append(name)
            return hook

        handles = [module.register_forward_pre_hook(record(name))
                   for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
        with torch.no_grad():
            model(torch.empty(1, 3, self.image, self.image, device="meta"))
        for handle in handles:
            handle.remove()
        return [ConvLayer(names[0], shape, len(names)) for shape, names in seen.items()]

    def weight_grad_gemms(self) -> dict[str, tuple[int, int, int]]:
        """The repeated 3x3 block convs' weight gradients as GEMMs: name -> (M = C_out, N = C_in*9, K)."""
        shapes = {}
        for layer in self.conv_layers():
            s = layer.shape
            if layer.count > 1:
                lengths = kernels.geometry.conv_reduction_lengths(s.c_in, s.c_out, s.kernel, s.kernel, s.batch,
                                                                  s.out_size, s.out_size)
                shapes[f"wgrad-{s.c_out}"] = (s.c_out, s.c_in * s.kernel**2, lengths["weight_grad"])
        return shapes

    def gemm_rows(self) -> list[tuple[str, tuple[int, int, int], str, str, str]]:
        """(case, (M, N, K), mode, precision, input format): square fixed per precision on inputs of
        that format, and fp16 on fp32 inputs (the kernel converts them in registers: what that
        costs against the fp16 row); then the weight-gradient shapes under splitk and atomic in
        fp32 and fp16."""
        square = f"square-{self.square}", (self.square,) * 3
        rows = [(*square, "fixed", p, p) for p in GEMM_PRECISIONS] + [(*square, "fixed", "fp16", "fp32")]
        rows += [(case, mnk, mode, precision, precision) for case, mnk in self.weight_grad_gemms().items()
                 for precision in ("fp32", "fp16") for mode in ("splitk", "atomic")]
        return rows

    def conv_rows(self) -> list[tuple[ConvLayer, str, str, str]]:
        """(layer, dtype, role, mode) of every conv row."""
        return [(layer, dtype, role, mode) for layer in self.conv_layers() for dtype in CONV_DTYPES
                for role in kernels.ROLES for mode in kernels.MODES]


GPU_PLAN = Plan()
TINY_PLAN = Plan(depth=10, widen=1, batch=2, image=8, square=64, splits=3, repeats=3, symmetry_steps=3, capped=False)
PLANS = {"gpu": GPU_PLAN, "tiny": TINY_PLAN}
