"""Seeded single-op workloads the probes run: one reduction of a layer on given shapes.

Ops (each one reduction of a layer, run through the public kernels API):

    matmul        a (m, k) @ b (k, n)                      kernels.matmul, policy.forward
    conv_forward  conv2d(x, w)                             kernels.conv2d, policy.forward
    conv_dgrad    d loss / d x for a given output gradient  kernels.conv2d, policy.input_grad
    conv_wgrad    d loss / d w for a given output gradient  kernels.conv2d, policy.weight_grad

Inputs are drawn from a seeded generator in float32 and then cast to the requested dtype, so a
workload is the same on every machine; the float64 reference computes the exact math on those
inputs with torch's own ops.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import kernels
from kernels import geometry

OPS = ("matmul", "conv_forward", "conv_dgrad", "conv_wgrad")
ROLE_OF_OP = {"matmul": "forward", "conv_forward": "forward", "conv_dgrad": "input_grad", "conv_wgrad": "weight_grad"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"op={op!r} is not allowed; choose one of {', '.join(map(repr, OPS))}")


def check_dtype_name(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {', '.join(map(repr, DTYPES))}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class MatmulShape:
    m: int
    k: int
    n: int

    def __str__(self) -> str:
        return f"{self.m}x{self.k}x{self.n}"


@dataclass(frozen=True)
class ConvShape:
    """batch, input channels, output channels, square image size, odd kernel size, stride, padding."""

    batch: int
    c_in: int
    c_out: int
    size: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1

    @property
    def out_size(self) -> int:
        return geometry.conv_output_size(self.size, self.kernel, self.stride, self.padding)

    def __str__(self) -> str:
        return f"{self.batch}x{self.c_in}x{self.c_out}x{self.size}k{self.kernel}s{self.stride}p{self.padding}"


_MATMUL_PATTERN = re.compile(r"^(\d+)x(\d+)x(\d+)$")
_CONV_PATTERN = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+)(?:k(\d+))?(?:s(\d+))?(?:p(\d+))?$")


def parse_shape(op: str, text: str):
    """"MxKxN" for matmul; "NxCINxCOUTxSIZE[kK][sS][pP]" for the conv ops (defaults k3 s1 p1); sizes >= 1."""
    check_op(op)
    if op == "matmul":
        match = _MATMUL_PATTERN.match(text)
        if not match:
            raise ValueError(f"shape={text!r} is not allowed for matmul; write MxKxN, e.g. 64x256x48")
        return _non_empty(text, MatmulShape(*map(int, match.groups())))
    match = _CONV_PATTERN.match(text)
    if not match:
        raise ValueError(f"shape={text!r} is not allowed for {op}; "
                         "write NxCINxCOUTxSIZE[kK][sS][pP], e.g. 8x16x32x16k3s2p1")
    batch, c_in, c_out, size, kernel, stride, padding = match.groups()
    return _non_empty(text, ConvShape(int(batch), int(c_in), int(c_out), int(size), int(kernel or 3),
                                      int(stride or 1), int(1 if padding is None else padding)))


def _non_empty(text: str, shape):
    """The shape, unless a size (padding aside) is 0: an empty result has no bits to probe."""
    if min(value for name, value in vars(shape).items() if name != "padding") < 1:
        raise ValueError(f"shape={text!r} is not allowed: every size (padding aside) must be >= 1")
    return shape


DEFAULT_SHAPES = {"matmul": MatmulShape(64, 256, 48), "conv_forward": ConvShape(4, 16, 24, 12),
                  "conv_dgrad": ConvShape(4, 16, 24, 12), "conv_wgrad": ConvShape(4, 16, 24, 12)}


def reduction_length(op: str, shape) -> int:
    """K of the op's reduction (splits may not exceed it)."""
    check_op(op)
    if op == "matmul":
        lengths = geometry.linear_reduction_lengths(shape.k, shape.n, shape.m)
    else:
        lengths = geometry.conv_reduction_lengths(shape.c_in, shape.c_out, shape.kernel, shape.kernel, shape.batch,
                                                  shape.out_size, shape.out_size)
    return lengths[ROLE_OF_OP[op]]


def make_inputs(op: str, shape, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    """The op's operands, drawn in float32 from a generator seeded with `seed`, then cast."""
    check_op(op)
    generator = torch.Generator().manual_seed(seed)

    def draw(*size):
        return torch.randn(*size, generator=generator).to(device=device, dtype=dtype)

    if op == "matmul":
        return {"a": draw(shape.m, shape.k), "b": draw(shape.k, shape.n)}
    return {
        "x": draw(shape.batch, shape.c_in, shape.size, shape.size),
        "w": draw(shape.c_out, shape.c_in, shape.kernel, shape.kernel) / shape.kernel,
        "grad_out": draw(shape.batch, shape.c_out, shape.out_size, shape.out_size),
    }


def _conv_roles(op: str, inputs: dict, shape, conv):
    """Run one conv role with `conv(x, w)`; returns the forward output or the requested gradient."""
    x, w = inputs["x"], inputs["w"]
    if op == "conv_forward":
        with torch.no_grad():
            return conv(x, w)
    wanted = x if op == "conv_dgrad" else w
    wanted = wanted.detach().requires_grad_(True)
    x, w = (wanted, w) if op == "conv_dgrad" else (x, wanted)
    with torch.enable_grad():
        return torch.autograd.grad(conv(x, w), wanted, inputs["grad_out"])[0]


def run_op(op: str, shape, inputs: dict, reduction, backend: str = "auto") -> torch.Tensor:
    """The op's output with `reduction` in its role (the other roles fixed fp32)."""
    check_op(op)
    policy = kernels.Policy(**{ROLE_OF_OP[op]: reduction})
    if op == "matmul":
        with torch.no_grad():
            return kernels.matmul(inputs["a"], inputs["b"], policy, backend=backend)
    return _conv_roles(op, inputs, shape, lambda x, w: kernels.conv2d(
        x, w, stride=shape.stride, padding=shape.padding, policy=policy, backend=backend))


def reference_op(op: str, shape, inputs: dict) -> torch.Tensor:
    """The op computed in float64 by torch (the exact math on the given inputs, up to fp64 rounding)."""
    check_op(op)
    inputs64 = {name: value.detach().double() for name, value in inputs.items()}
    if op == "matmul":
        return inputs64["a"] @ inputs64["b"]
    return _conv_roles(op, inputs64, shape, lambda x, w: F.conv2d(x, w, stride=shape.stride, padding=shape.padding))
