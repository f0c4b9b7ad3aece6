"""`kernels.matmul`: a differentiable GEMM whose every reduction follows a policy."""
from __future__ import annotations

import torch

from .backends import resolve_backend
from .gemm import check_float_tensor, run_gemm
from .reduction import Policy, as_policy


class _Matmul(torch.autograd.Function):
    """Forward a @ b; backward grad @ b^T (input_grad role) and a^T @ grad (weight_grad role)."""

    @staticmethod
    def forward(ctx, a, b, policy: Policy, backend: str):
        ctx.save_for_backward(a, b)
        ctx.policy, ctx.backend = policy, backend
        return run_gemm(a, b, policy.forward, backend, torch.promote_types(a.dtype, b.dtype))

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        policy, backend = ctx.policy, ctx.backend
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = run_gemm(grad, b.t(), policy.input_grad, backend, a.dtype, "input_grad")
        if ctx.needs_input_grad[1]:
            grad_b = run_gemm(a.t(), grad, policy.weight_grad, backend, b.dtype, "weight_grad")
        return grad_a, grad_b, None, None


def check_matmul_operands(a, b) -> None:
    check_float_tensor("a", a)
    check_float_tensor("b", b)
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"matmul takes 2-D a (M, K) and b (K, N); got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"shape mismatch: a is {tuple(a.shape)} and b is {tuple(b.shape)}; a.shape[1] must equal b.shape[0]"
        )
    if a.device != b.device:
        raise ValueError(f"a is on {a.device} and b on {b.device}; both must be on the same device")


def matmul(a: torch.Tensor, b: torch.Tensor, reduction=None, *, backend: str = "auto") -> torch.Tensor:
    """a (M, K) @ b (K, N) with an explicit reduction order and precision.

    `reduction` is a Reduction (used for the forward GEMM and both backward GEMMs), a Policy
    (forward: a @ b, input_grad: grad @ b^T, weight_grad: a^T @ grad) or None (fixed fp32).
    The result has torch's promoted dtype of a and b.
    """
    check_matmul_operands(a, b)
    policy = as_policy(reduction)
    resolved = resolve_backend(backend, a.device)
    if resolved == "native":
        out_dtype = torch.promote_types(a.dtype, b.dtype)
        return torch.matmul(a.to(out_dtype), b.to(out_dtype))
    return _Matmul.apply(a, b, policy, resolved)
