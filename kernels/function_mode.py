"""`kernels.function_policy_mode`: F.conv2d, F.linear, the matmul family and attention under a
policy, caught where Python calls them.

    with kernels.function_policy_mode(policy) as mode:   # a Reduction, a Policy or None
        loss_fn(model(x), y).backward()
    print(mode.report.table())

The mode is a TorchFunctionMode: it sees the torch functions Python code calls, above
autograd, and sends each one it routes to kernels.conv2d or kernels.matmul, whose own autograd
then runs the input- and weight-gradient roles under the policy: the backward needs no mode,
and a model gets the same bits as under kernels.patch (F.linear is computed as kernels.Linear
computes it). Routed: F.conv2d (2-D, groups 1, dilation 1, odd kernels, integer padding),
F.linear, torch.mm, torch.matmul and `@` (2-D operands, or a stack of rows times a matrix, or
two equal stacks of matrices), torch.bmm (one GEMM per batch entry), torch.addmm and
torch.baddbmm with beta = alpha = 1, and attention: F.scaled_dot_product_attention and
F.multi_head_attention_forward (nn.MultiheadAttention) computed on their math path with every
product routed (kernels.function_attention). The rest falls through to torch; the reductions it
knows (what it cannot run of the above, and UNSEEN: einsum, tensordot, ...) are counted in
`mode.report` with the reason.

Its cost is one Python call per torch function or tensor method the block calls from Python (75
in a ConstNet-10-1 training step; the kernels' own calls in a backward are not seen), against one
per aten op of forward and backward for kernels.policy_mode (127 there). What it cannot see is
what torch decomposes below Python (einsum, tensordot, any C++ composite that runs a GEMM),
which kernels.policy_mode routes. Splits above a role's reduction length are capped at it, call
by call, and reported.
"""
from __future__ import annotations

import math

import torch
from torch.overrides import TorchFunctionMode

from . import function_attention
from .checks import called_by_kernels, check_mode_backend, conv_refusal, operand_refusal, roles_to_run
from .conv import conv2d
from .dispatch_report import DispatchReport
from .gemm import matmul
from .geometry import conv_output_size, conv_reduction_lengths, linear_reduction_lengths
from .patch import fit_policy
from .reduction import as_policy


class FunctionPolicyMode(TorchFunctionMode):
    """The mode behind `function_policy_mode`; `report` counts what it controlled."""

    def __init__(self, policy=None, backend: str = "auto"):
        super().__init__()
        self.policy, self.backend = as_policy(policy), check_mode_backend(backend)
        self.report = DispatchReport(self.policy.describe())
        self._fits: dict[tuple, tuple] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = ROUTES.get(func)
        if route is not None and not called_by_kernels():
            name, handler = route
            out = handler(self, name, *args, **kwargs)
            if out is not None:
                return out
        elif func in UNSEEN and not called_by_kernels():
            self._refused(UNSEEN[func], "its GEMMs run out of this mode's sight (kernels.policy_mode routes them)")
        return func(*args, **kwargs)

    def _fitted(self, name: str, lengths: dict, roles) -> object:
        """The policy with its splits capped at the roles' lengths (fitted once per lengths), counted."""
        key = tuple(lengths.values())
        if key not in self._fits:
            self._fits[key] = fit_policy(self.policy, lengths)
        policy, caps = self._fits[key]
        for role in roles:
            self.report.count(name, role)
            if role in caps:
                self.report.cap(name, role, caps[role])
        return policy

    def _refused(self, name: str, reason: str) -> None:
        self.report.count(name, "forward", reason)

    # -- convolution ---------------------------------------------------------------------------
    def _conv2d(self, name, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
        reason = _conv_refusal(x, w, bias, padding, dilation, groups)
        if reason is not None:
            return self._refused(name, reason)
        stride, padding = _pair(stride), _pair(padding)
        out_size = [conv_output_size(*sizes) for sizes in zip(x.shape[2:], w.shape[2:], stride, padding)]
        lengths = conv_reduction_lengths(x.shape[1], w.shape[0], *w.shape[2:], x.shape[0], *out_size)
        policy = self._fitted(name, lengths, roles_to_run(x.requires_grad, w.requires_grad))
        return conv2d(x, w, bias, stride, padding, policy=policy, backend=self.backend)

    # -- GEMMs ---------------------------------------------------------------------------------
    def _gemm(self, name, a, b):
        """a (M, K) @ b (K, N), or that per entry of two equal stacks, through kernels.matmul; one
        reduction per role in the report either way. None if refused (counted)."""
        reason = operand_refusal(a, b)
        if reason is not None:
            return self._refused(name, reason)
        lengths = linear_reduction_lengths(a.shape[-1], b.shape[-1], a.shape[-2])
        policy = self._fitted(name, lengths, roles_to_run(a.requires_grad, b.requires_grad))
        return matmul(a, b, policy, backend=self.backend)

    def _linear(self, name, x, w, bias=None):
        if x.dim() == 0 or w.dim() != 2 or x.shape[-1] != w.shape[1]:
            return self._refused(name, "shapes")
        out = self._gemm(name, x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), w.t())
        if out is None:
            return None
        if bias is not None:
            out = out + bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], w.shape[0])

    def _matmul(self, name, a, b):
        if a.dim() >= 2 and b.dim() == 2:  # rows of any stack times one matrix, as F.linear folds them
            out = self._gemm(name, a.reshape(-1, a.shape[-1]), b) if a.shape[-1] == b.shape[0] else None
            return None if out is None else out.reshape(*a.shape[:-1], b.shape[1])
        if a.dim() == b.dim() == 3 and a.shape[0] == b.shape[0]:
            return self._bmm(name, a, b)
        return self._refused(name, f"{a.dim()}-D @ {b.dim()}-D")

    def _mm(self, name, a, b):
        if a.dim() != 2 or b.dim() != 2:
            return self._refused(name, "shapes")
        return self._gemm(name, a, b)

    def _bmm(self, name, a, b):
        if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]:
            return self._refused(name, "shapes")
        return None if a.shape[0] == 0 else self._gemm(name, a, b)

    def _added(self, name, product, added, *m, beta=1, alpha=1):
        if beta != 1 or alpha != 1:
            return self._refused(name, "beta or alpha other than 1")
        out = product(self, name, *m)
        return None if out is None else added + out

    def _addmm(self, name, added, a, b, *, beta=1, alpha=1):
        return self._added(name, FunctionPolicyMode._mm, added, a, b, beta=beta, alpha=alpha)

    def _baddbmm(self, name, added, a, b, *, beta=1, alpha=1):
        return self._added(name, FunctionPolicyMode._bmm, added, a, b, beta=beta, alpha=alpha)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _conv_refusal(x, w, bias, padding, dilation, groups) -> str | None:
    """Why kernels.conv2d cannot run this F.conv2d call, or None if it can."""
    if x.dim() != 4 or w.dim() != 4:
        return "not a batched 2-D convolution"
    if isinstance(padding, str):
        return f"padding={padding!r}"
    return conv_refusal(x, w, _pair(dilation), groups, *([] if bias is None else [bias]))


# torch function -> (the name the report uses, its handler)
ROUTES = {
    torch.conv2d: ("conv2d", FunctionPolicyMode._conv2d),
    torch.nn.functional.linear: ("linear", FunctionPolicyMode._linear),
    torch.matmul: ("matmul", FunctionPolicyMode._matmul),
    torch.Tensor.matmul: ("matmul", FunctionPolicyMode._matmul),
    torch.Tensor.__matmul__: ("matmul", FunctionPolicyMode._matmul),
    torch.mm: ("mm", FunctionPolicyMode._mm),
    torch.Tensor.mm: ("mm", FunctionPolicyMode._mm),
    torch.bmm: ("bmm", FunctionPolicyMode._bmm),
    torch.Tensor.bmm: ("bmm", FunctionPolicyMode._bmm),
    torch.addmm: ("addmm", FunctionPolicyMode._addmm),
    torch.baddbmm: ("baddbmm", FunctionPolicyMode._baddbmm),
    torch.nn.functional.scaled_dot_product_attention: ("scaled_dot_product_attention",
                                                       function_attention.scaled_dot_product_attention),
    torch.nn.functional.multi_head_attention_forward: ("multi_head_attention_forward",
                                                       function_attention.multi_head_attention_forward),
}

# Reducing torch functions whose GEMMs this mode cannot route: they run below Python. Counted
# as native, so that the report's share says what the policy missed.
UNSEEN = {
    torch.einsum: "einsum",
    torch.tensordot: "tensordot",
    torch.nn.functional.bilinear: "bilinear",
    torch.addbmm: "addbmm",
    torch.mv: "mv",
    torch.dot: "dot",
    torch.conv1d: "conv1d",
    torch.conv3d: "conv3d",
    torch.conv_transpose2d: "conv_transpose2d",
}


def function_policy_mode(policy=None, *, backend: str = "auto") -> FunctionPolicyMode:
    """A context manager running F.conv2d, F.linear and the matmul family under `policy`.

    `policy` is a Policy (one Reduction per role), a Reduction (every role) or None (fixed
    fp32); `backend` is "auto" (triton on CUDA, emulate on CPU), "triton", "interpret" or
    "emulate". `mode.report` (a DispatchReport) says what it controlled, by function and role.
    """
    return FunctionPolicyMode(policy, backend)
