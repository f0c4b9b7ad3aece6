"""`kernels.matmul`: a differentiable GEMM whose every reduction follows a policy.

The three roles of a @ b are GEMMs of their own (K is each one's reduction length):

    role         GEMM            K
    forward      a @ b           a.shape[1]
    input_grad   grad @ b^T      b.shape[1]
    weight_grad  a^T @ grad      a.shape[0]

`run_gemm` runs one of them on a resolved backend; kernels.conv_emulate uses it too. Two equal
stacks of matrices (B, M, K) @ (B, K, N) are B such GEMMs, each role one per entry.
"""
from __future__ import annotations

import torch

from . import gemm_emulate
from .backends import resolve_backend
from .calls import next_key
from .checks import check_float_tensor, check_policy, refuse_double_backward, roles_to_run
from .geometry import linear_reduction_lengths
from .reduction import Policy, Reduction, as_policy


def run_gemm(a, b, reduction: Reduction, backend: str, out_dtype: torch.dtype):
    """a (M, K) @ b (K, N) under `reduction` on a resolved, checked backend, any strides; for
    equal stacks (B, M, K) @ (B, K, N), that GEMM per entry in entry order."""
    if a.dim() == 3:
        out = torch.empty(a.shape[0], a.shape[1], b.shape[2], dtype=out_dtype, device=a.device)
        for i in range(a.shape[0]):
            out[i] = run_gemm(a[i], b[i], reduction, backend, out_dtype)
        return out
    key = next_key(reduction)
    if backend == "emulate":
        return gemm_emulate.gemm(a, b, reduction, key, out_dtype)
    from . import gemm_triton

    return gemm_triton.gemm(a, b, reduction, key, out_dtype)


class _Matmul(torch.autograd.Function):
    """Forward a @ b; backward grad @ b^T (input_grad role) and a^T @ grad (weight_grad role)."""

    @staticmethod
    def forward(ctx, a, b, policy: Policy, backend: str):
        ctx.save_for_backward(a, b)
        ctx.policy, ctx.backend = policy, backend
        return run_gemm(a, b, policy.forward, backend, torch.promote_types(a.dtype, b.dtype))

    @staticmethod
    def backward(ctx, grad):
        refuse_double_backward("kernels.matmul")
        a, b = ctx.saved_tensors
        policy, backend = ctx.policy, ctx.backend
        grad_a = grad_b = None
        with torch._C.DisableTorchFunction():  # function modes (kernels.function_mode) skip the roles' own calls
            if ctx.needs_input_grad[0]:
                grad_a = run_gemm(grad, b.mT, policy.input_grad, backend, a.dtype)
            if ctx.needs_input_grad[1]:
                grad_b = run_gemm(a.mT, grad, policy.weight_grad, backend, b.dtype)
        return grad_a, grad_b, None, None


def _check_operands(a, b) -> None:
    check_float_tensor("a", a)
    check_float_tensor("b", b)
    if a.dim() != b.dim() or a.dim() not in (2, 3) or (a.dim() == 3 and a.shape[0] != b.shape[0]):
        raise ValueError(f"matmul takes 2-D a (M, K) and b (K, N), or stacks (B, M, K) and (B, K, N); "
                         f"got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"shape mismatch: a is {tuple(a.shape)} and b is {tuple(b.shape)}; a.shape[-1] must equal b.shape[-2]"
        )
    if a.device != b.device:
        raise ValueError(f"a is on {a.device} and b on {b.device}; both must be on the same device")


def matmul(a: torch.Tensor, b: torch.Tensor, reduction=None, *, backend: str = "auto") -> torch.Tensor:
    """a (M, K) @ b (K, N) with an explicit reduction order and precision; for stacks a (B, M, K)
    and b (B, K, N), that GEMM per entry (every role of each entry under the same policy).

    `reduction` is a Reduction (used for the forward GEMM and both backward GEMMs), a Policy
    (forward: a @ b, input_grad: grad @ b^T, weight_grad: a^T @ grad) or None (fixed fp32).
    Splits are checked against each role's K for the roles this call will run (the gradient
    roles when grad is enabled and the respective operand requires it). The result has
    torch's promoted dtype of a and b.
    """
    _check_operands(a, b)
    policy = as_policy(reduction)
    resolved = resolve_backend(backend, a.device)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    if resolved == "native":
        return torch.matmul(a.to(out_dtype), b.to(out_dtype))
    lengths = linear_reduction_lengths(a.shape[-1], b.shape[-1], a.shape[-2])
    check_policy(policy, resolved, lengths, roles_to_run(a.requires_grad, b.requires_grad))
    return _Matmul.apply(a, b, policy, resolved)
