"""`kernels.conv2d`: a differentiable 2-D convolution whose three reductions follow a policy.

Each role of the layer is one GEMM; its orientation and index orders are the specification
that the emulate and Triton backends share, so the splitk order function (kernels.order) sees
the same (m, n) positions and the same chunks of K on both:

    role         m    n                        K index                  K
    forward      co   b*Ho*Wo + oy*Wo + ox     ci*kh*kw + ky*kw + kx    Cin*kh*kw
    input_grad   ci   b*H*W + y*W + x          co*kh*kw + ky*kw + kx    Cout*kh*kw
    weight_grad  co   ci*kh*kw + ky*kw + kx    b*Ho*Wo + oy*Wo + ox     N*Ho*Wo

The input gradient runs over all kh*kw taps of every output channel; taps that land on no
output position (between strided outputs, or in the padding) contribute exact zeros, so every
input position has the same K and its chunk boundaries do not depend on where it lies.

The bias is added after the forward reduction in the output dtype, and its gradient (a sum of
the output gradient over N, H, W) is left to torch's autograd: neither follows the policy.
Call numbers of seeded roles are taken in the order forward, then input_grad, then weight_grad
of each backward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import conv_emulate
from .backends import resolve_backend
from .checks import check_float_tensor, check_policy, refuse_double_backward, roles_to_run
from .geometry import conv_output_size, conv_reduction_lengths
from .reduction import Policy, as_policy


def role_backend(backend: str):
    """The module computing the three roles on a resolved backend other than native."""
    if backend == "emulate":
        return conv_emulate
    from . import conv_triton

    return conv_triton


class _Conv2d(torch.autograd.Function):
    """Forward, input gradient and weight gradient, each under its own Reduction."""

    @staticmethod
    def forward(ctx, x, w, policy: Policy, backend: str, stride, padding):
        ctx.save_for_backward(x, w)
        ctx.policy, ctx.backend, ctx.stride, ctx.padding = policy, backend, stride, padding
        out_dtype = torch.promote_types(x.dtype, w.dtype)
        return role_backend(backend).forward(x, w, stride, padding, policy.forward, out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        refuse_double_backward("kernels.conv2d")
        x, w = ctx.saved_tensors
        with torch._C.DisableTorchFunction():  # function modes (kernels.function_mode) skip the roles' own calls
            grad_x, grad_w = role_backend(ctx.backend).gradients(
                x, w, grad_out, ctx.stride, ctx.padding,
                ctx.policy.input_grad if ctx.needs_input_grad[0] else None,
                ctx.policy.weight_grad if ctx.needs_input_grad[1] else None,
            )
        return grad_x, grad_w, None, None, None, None


def int_pair(name: str, value, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; each entry must be >= {minimum}")
    return pair


def _check_operands(x, w, bias) -> None:
    check_float_tensor("x", x)
    check_float_tensor("w", w)
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D (N, C_in, H, W) tensor, got shape {tuple(x.shape)}")
    if w.dim() != 4:
        raise ValueError(f"w must be a 4-D (C_out, C_in, kh, kw) tensor, got shape {tuple(w.shape)}")
    if x.device != w.device:
        raise ValueError(f"x is on {x.device} and w on {w.device}; both must be on the same device")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"channel mismatch: x has C_in={x.shape[1]} channels but w expects {w.shape[1]} "
            f"(w is {tuple(w.shape)}; only groups=1 is supported)"
        )
    if w.shape[2] % 2 == 0 or w.shape[3] % 2 == 0:
        raise ValueError(f"kernel size {tuple(w.shape[2:])} is not allowed; kh and kw must be odd")
    if bias is not None:
        check_float_tensor("bias", bias)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},) (one per output channel), got {tuple(bias.shape)}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} and x on {x.device}; both must be on the same device")


def conv2d(x, w, bias=None, stride=1, padding=0, *, policy=None, backend: str = "auto") -> torch.Tensor:
    """2-D convolution (groups 1, dilation 1, zero padding) with an explicit reduction order.

    x (N, C_in, H, W), w (C_out, C_in, kh, kw) with odd kh and kw, bias (C_out,) or None;
    stride and padding an int or a pair. `policy` is a Policy (forward, input_grad,
    weight_grad), a Reduction used in every role, or None (fixed fp32). Backends: "auto"
    (triton on CUDA, emulate on CPU), "triton", "interpret", "emulate", or "native" (torch's
    F.conv2d and its autograd; the policy is not applied). Splits are checked against each
    role's K for the roles this call will run (the gradient roles when grad is enabled and the
    respective operand requires it). The result has torch's promoted dtype of x and w.
    """
    _check_operands(x, w, bias)
    stride = int_pair("stride", stride, 1)
    if isinstance(padding, str):
        raise TypeError(f"padding must be an int or a pair of ints, got the string {padding!r}")
    padding = int_pair("padding", padding, 0)
    policy = as_policy(policy)
    resolved = resolve_backend(backend, x.device)
    out_size = tuple(map(conv_output_size, x.shape[2:], w.shape[2:], stride, padding))
    if min(out_size) < 1:
        raise ValueError(
            f"input {tuple(x.shape[2:])} with padding {padding} is smaller than the kernel {tuple(w.shape[2:])}"
        )
    out_dtype = torch.promote_types(x.dtype, w.dtype)
    if resolved == "native":
        native_bias = None if bias is None else bias.to(out_dtype)
        return F.conv2d(x.to(out_dtype), w.to(out_dtype), native_bias, stride, padding)
    cout, cin, kh, kw = w.shape
    lengths = conv_reduction_lengths(cin, cout, kh, kw, x.shape[0], *out_size)
    check_policy(policy, resolved, lengths, roles_to_run(x.requires_grad, w.requires_grad))
    out = _Conv2d.apply(x, w, policy, resolved, stride, padding)
    if bias is not None:
        out = out + bias.to(out_dtype).view(1, -1, 1, 1)
    return out
