"""Drop-in `Conv2d` and `Linear`: torch's layers whose reductions follow a Policy.

They subclass torch.nn.Conv2d / torch.nn.Linear, so parameters, initialisation and state_dict
are torch's own; only `forward` changes, and two plain attributes say how it runs: `policy`
(a Policy, or a Reduction / None turned into one) and `backend` (see kernels.backends).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .backends import check_backend_name
from .checks import check_count, check_flag, check_float_tensor, check_module, check_placement
from .conv import int_pair, conv2d
from .gemm import matmul
from .reduction import as_policy


def reducing_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every nn.Conv2d and nn.Linear of `model` (itself included, drop-ins too), by qualified name."""
    check_module("model", model)
    return [(name, layer) for name, layer in model.named_modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]


def unsupported_conv_reason(conv: nn.Conv2d) -> str | None:
    """Why kernels.conv2d cannot run this nn.Conv2d's configuration, or None if it can."""
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} is a string; only integer padding is supported"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation={tuple(conv.dilation)} is not supported; only dilation 1"
    if conv.groups != 1:
        return f"groups={conv.groups} is not supported; only groups 1"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not supported; only 'zeros'"
    if any(k % 2 == 0 for k in conv.kernel_size):
        return f"kernel_size={tuple(conv.kernel_size)} is not supported; kernel sizes must be odd"
    return None


def _check_conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias) -> None:
    """Refuse malformed Conv2d arguments before torch's constructor, whose errors name none of them."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        check_count(name, value)
    int_pair("kernel_size", kernel_size, 1)
    int_pair("stride", stride, 1)
    int_pair("dilation", dilation, 1)
    if not isinstance(padding, str):  # string padding is refused after construction, with its reason
        int_pair("padding", padding, 0)
    check_flag("bias", bias)


class _PolicyLayer:
    """What both drop-ins share: the policy and backend attributes, and adoption in place."""

    policy: object
    backend: str

    def _configure(self, policy, backend) -> None:
        self.policy = as_policy(policy)
        self.backend = check_backend_name(backend)

    @classmethod
    def adopt(cls, layer: nn.Module, policy=None, backend: str = "auto"):
        """Turn an existing torch layer into this drop-in in place and return it.

        The object itself is kept (its parameters, buffers, hooks and every reference to it);
        only its class changes, so optimizers and state_dict keep working and no weights are
        re-initialised.
        """
        layer.__class__ = cls
        layer._configure(policy, backend)
        return layer

    def _policy_repr(self) -> str:
        return f"policy=({self.policy.describe()}), backend={self.backend!r}"


class Conv2d(_PolicyLayer, nn.Conv2d):
    """nn.Conv2d computed by kernels.conv2d under `policy` (groups 1, dilation 1, zero padding)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, policy=None, backend="auto"):
        _check_conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        check_placement(device, dtype)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        reason = unsupported_conv_reason(self)
        if reason is not None:
            raise ValueError(f"kernels.Conv2d: {reason}")
        self._configure(policy, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_tensor("x", x)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        out = conv2d(x, self.weight, self.bias, self.stride, self.padding, policy=self.policy, backend=self.backend)
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._policy_repr()}"


class Linear(_PolicyLayer, nn.Linear):
    """nn.Linear computed by kernels.matmul under `policy`; any number of leading dims.

    Roles: forward x @ W^T, input_grad grad @ W, weight_grad x^T @ grad (the transposed weight
    gradient, m = in_features, n = out_features). The bias is added after the reduction.
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, policy=None, backend="auto"):
        check_count("in_features", in_features)
        check_count("out_features", out_features)
        check_flag("bias", bias)
        check_placement(device, dtype)
        super().__init__(in_features, out_features, bias, device, dtype)
        self._configure(policy, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_tensor("x", x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects inputs (..., {self.in_features}), got shape {tuple(x.shape)}")
        rows = x.reshape(math.prod(x.shape[:-1]), self.in_features)
        out = matmul(rows, self.weight.t(), self.policy, backend=self.backend)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._policy_repr()}"
