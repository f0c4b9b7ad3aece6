"""Sizes of the reductions a layer makes: the one definition every other module reads.

Each role of a layer is one GEMM whose reduction length K is:

    role         conv2d (kernels.conv)      linear (kernels.gemm)
    forward      C_in * kh * kw             in_features
    input_grad   C_out * kh * kw            out_features
    weight_grad  N * H_out * W_out          batch (rows of the flattened input)
"""
from __future__ import annotations


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one spatial dimension of a convolution without dilation."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_reduction_lengths(c_in: int, c_out: int, kh: int, kw: int, batch: int, h_out: int, w_out: int) -> dict:
    """K of each role of a conv2d: {"forward": ..., "input_grad": ..., "weight_grad": ...}."""
    return {"forward": c_in * kh * kw, "input_grad": c_out * kh * kw, "weight_grad": batch * h_out * w_out}


def linear_reduction_lengths(in_features: int, out_features: int, batch: int) -> dict:
    """K of each role of a linear layer (or a matmul a (batch, in) @ b (in, out))."""
    return {"forward": in_features, "input_grad": out_features, "weight_grad": batch}
