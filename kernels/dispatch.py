"""`kernels.policy_mode`: every matmul and convolution torch runs, under a reduction policy.

    with kernels.policy_mode(policy) as mode:      # a Reduction, a Policy or None
        loss_fn(model(x), y).backward()
        optimizer.step()
    print(mode.report.table())

The mode is a TorchDispatchMode: it sees aten ops below autograd, after torch has decomposed
F.linear, torch.matmul, einsum, nn.MultiheadAttention and scaled_dot_product_attention (kept
on its math path inside the mode) into aten mm / addmm / bmm / baddbmm and F.conv2d into
aten convolution, and it sees the GEMMs and aten convolution_backward that autograd's backward
formulas run. Each one runs on a kernels backend under the Reduction of its role:

    forward      the op itself, outside a backward pass
    input_grad   the gradient of its first operand, grad @ second^T (of a convolution's input)
    weight_grad  the gradient of its second operand, first^T @ grad (of a convolution's weight)

in the orientation kernels.matmul and kernels.conv2d use (kernels.dispatch_roles), so a model
under the mode computes the GEMMs of the same model under kernels.patch, on the same operands,
with call numbers taken in the order autograd runs them. A bmm is one GEMM per batch entry.
Splits above a reduction's length are capped at it, call by call, and reported.

What falls through to torch, counted in `mode.report`: other GEMM-like ops (mv, dot, fused
attention and RNN kernels, ...), out= variants, conv configurations kernels.conv2d cannot run
(not 2-D, groups, dilation, transposed, even kernels), dtypes the kernels do not read, GEMMs
in backward nodes whose role is unknown, and double backward. Ops that the kernels package
runs itself (a patched layer, a direct kernels.matmul call) pass through uncounted: they follow
their own policy. Run the backward inside the mode, or its GEMMs run natively unseen.

Every aten op of the block passes through the mode's Python handler, GEMM or not; the handler
sends the ops it does not act on straight back to torch after one dictionary lookup.
`without_policy_mode()` lifts the mode for a block that runs no GEMM (the training step's
optimizer update), sparing its ops that Python round trip.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import replace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode, _pop_mode_temporarily

from .backends import resolve_backend
from .checks import (called_by_kernels, check_mode_backend, check_reduction_on_backend, conv_refusal,
                     operand_refusal)
from .conv import role_backend
from .dispatch_report import DispatchReport
from .function_mode import FunctionPolicyMode
from .dispatch_roles import backward_gemm_role
from .gemm import run_gemm
from .reduction import as_policy

aten = torch.ops.aten
ROUTES = {aten.mm.default: "_gemm", aten.addmm.default: "_gemm", aten.bmm.default: "_gemm",
          aten.baddbmm.default: "_gemm", aten.convolution.default: "_conv",
          aten.convolution_backward.default: "_conv_backward"}
# GEMM-like ops the mode leaves to torch, counted so that the report's share stays honest.
UNROUTED = frozenset(getattr(aten, name) for name in (
    "mv", "dot", "vdot", "addmv", "addbmm", "_trilinear", "_cdist_forward", "_cdist_backward",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward",
    "_flash_attention_forward", "_efficient_attention_forward", "_transformer_encoder_layer_fwd",
    "_native_multi_head_attention", "_addmm_activation", "_int_mm", "_scaled_mm", "mkldnn_linear",
    "_convolution", "cudnn_convolution", "cudnn_convolution_transpose", "mkldnn_convolution",
    "_cudnn_rnn", "mkldnn_rnn_layer", "miopen_rnn", "conv_tbc", "_slow_conv2d_forward",
    "slow_conv3d_forward", "_conv_depthwise2d",
    "mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward",  # their other overloads
))
COUNT = "count"  # the plan of an unrouted GEMM-like op: counted, then run by torch
# id(op) -> (op, its plan: a route's method name or COUNT) for every overload the mode acts on.
# Every aten op of a step passes through the handler, so the others are told apart by one
# lookup of an int (an OpOverload's own hash is Python code).
PLANS = {id(op): (op, COUNT) for packet in UNROUTED for op in (getattr(packet, name) for name in packet.overloads())}
PLANS.update((id(op), (op, route)) for op, route in ROUTES.items())


FALL_THROUGH = object()  # a route's answer when torch should run the op itself


def _conv_refusal(x, w, stride, dilation, transposed, groups) -> str | None:
    """Why kernels.conv2d cannot run this aten convolution, or None if it can."""
    if x.dim() != 4:
        return f"{x.dim() - 2}-D convolution (kernels run 2-D)"
    if transposed:
        return "transposed convolution"
    return conv_refusal(x, w, dilation, groups)


class PolicyMode(TorchDispatchMode):
    """The dispatch mode behind `policy_mode`; `report` counts what it controlled."""

    def __init__(self, policy=None, backend: str = "auto"):
        super().__init__()
        self.policy, self.backend = as_policy(policy), check_mode_backend(backend)
        self.report = DispatchReport(self.policy.describe())
        self._stack = ExitStack()

    def __enter__(self):
        # Attention decomposes into bmm only on its math path; the fused encoder fast path never does.
        self._stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        self._stack.callback(torch.backends.mha.set_fastpath_enabled, fastpath)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._stack.close()

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's handler in torch._dynamo.disable unless told not to; in eager
        # execution that wrapper only costs every aten op about a microsecond.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        entry = PLANS.get(id(func))
        if entry is None or called_by_kernels():
            return func(*args, **kwargs) if kwargs else func(*args)
        kwargs = kwargs or {}
        plan, node = entry[1], torch._C._current_autograd_node()
        if plan is COUNT:
            self._native(func, node, "op not routed")
        elif node is not None and torch.is_grad_enabled():
            self._native(func, node, "double backward")
        else:
            out = getattr(self, plan)(func, node, *args, **kwargs)
            if out is not FALL_THROUGH:
                return out
        return func(*args, **kwargs)

    # -- accounting --------------------------------------------------------------------------
    def _native(self, func, node, reason: str) -> None:
        role = "forward" if node is None else f"in {node.name()}"
        self.report.count(func.name().removeprefix("aten::"), role, reason)

    def _reduction(self, op: str, role: str, length: int):
        """The role's Reduction, its splits capped at the reduction length."""
        reduction = getattr(self.policy, role)
        if 0 < length < reduction.splits:
            reduction = replace(reduction, splits=length)
            self.report.cap(op, role, length)
        return reduction

    def _backend(self, reduction, role: str, device) -> str:
        backend = resolve_backend(self.backend, device)
        check_reduction_on_backend(reduction, backend, role)
        return backend

    # -- GEMMs -------------------------------------------------------------------------------
    def _gemm(self, func, node, *args, beta=1, alpha=1):
        added, (a, b) = (args[0], args[1:]) if len(args) == 3 else (None, args)
        if node is None:
            op, role, transposed = func.overloadpacket.__name__, "forward", False
        else:
            found = backward_gemm_role(node, a, b)
            if found is None:
                self._native(func, node, "role unknown")
                return FALL_THROUGH
            op, role, transposed = found
        refusal = operand_refusal(a, b)
        if refusal is None and (a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]):
            refusal = "shape mismatch"
        if refusal is not None:
            self.report.count(op, role, refusal)
            return FALL_THROUGH
        out = self._product(op, role, b.mT, a.mT).mT if transposed else self._product(op, role, a, b)
        if alpha != 1:
            out = out * alpha
        if added is None or beta == 0:
            return out
        return out + (added if beta == 1 else added * beta)

    def _product(self, op: str, role: str, a, b):
        """a @ b (2-D, or one GEMM per batch entry) under the role's Reduction."""
        reduction = self._reduction(op, role, a.shape[-1])
        backend = self._backend(reduction, role, a.device)
        self.report.count(op, role)
        return run_gemm(a, b, reduction, backend, a.dtype)

    # -- convolutions ------------------------------------------------------------------------
    def _conv(self, func, node, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
        refusal = _conv_refusal(x, w, stride, dilation, transposed, groups)
        if refusal is not None:
            self.report.count("convolution", "forward", refusal)
            return FALL_THROUGH
        cout, cin, kh, kw = w.shape
        reduction = self._reduction("convolution", "forward", cin * kh * kw)
        backend = self._backend(reduction, "forward", x.device)
        self.report.count("convolution", "forward")
        out = role_backend(backend).forward(x, w, tuple(stride), tuple(padding), reduction, x.dtype)
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    def _conv_backward(self, func, node, grad, x, w, bias_sizes, stride, padding, dilation, transposed,
                       output_padding, groups, output_mask):
        refusal = _conv_refusal(x, w, stride, dilation, transposed, groups)
        if refusal is not None:
            for role, wanted in zip(("input_grad", "weight_grad"), output_mask):
                if wanted:
                    self.report.count("convolution", role, refusal)
            return FALL_THROUGH
        stride, padding = tuple(stride), tuple(padding)
        cout, cin, kh, kw = w.shape
        lengths = {"input_grad": cout * kh * kw, "weight_grad": grad.shape[0] * grad.shape[2] * grad.shape[3]}
        reductions = {role: self._reduction("convolution", role, length)
                      for (role, length), wanted in zip(lengths.items(), output_mask) if wanted}
        grads = None, None
        for role, reduction in reductions.items():
            backend = self._backend(reduction, role, x.device)  # the same for both roles
            self.report.count("convolution", role)
        if reductions:
            grads = role_backend(backend).gradients(
                x, w, grad, stride, padding, reductions.get("input_grad"), reductions.get("weight_grad"))
        return (*grads, grad.sum((0, 2, 3)) if output_mask[2] else None)


def policy_mode(policy=None, *, backend: str = "auto") -> PolicyMode:
    """A context manager running every aten matmul and convolution under `policy`.

    `policy` is a Policy (one Reduction per role), a Reduction (every role) or None (fixed
    fp32); `backend` is "auto" (triton on CUDA, emulate on CPU), "triton", "interpret" or
    "emulate". `with policy_mode(p) as mode:` ... `mode.report` (a DispatchReport) says what
    it controlled, by op and role.
    """
    return PolicyMode(policy, backend)


@contextmanager
def without_policy_mode():
    """Run a block outside the policy mode that is the innermost dispatch mode, and outside the
    function policy mode that is the innermost function mode, where they are.

    For code that runs no matmul or convolution, such as an optimizer's per-tensor update: the
    modes would route nothing there, and each of its ops would still pay a mode's Python call.
    """
    with ExitStack() as lifted:
        if isinstance(_get_current_dispatch_mode(), PolicyMode):
            lifted.enter_context(_pop_mode_temporarily())
        if isinstance(torch.overrides._get_current_function_mode(), FunctionPolicyMode):
            lifted.enter_context(torch.overrides._pop_mode_temporarily())
        yield
