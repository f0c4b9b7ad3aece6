"""Which role a GEMM plays when torch's autograd runs it inside a backward node.

torch differentiates a @ b (aten mm, addmm, bmm, baddbmm) with two GEMMs of its own:

    gradient of the first operand    grad @ second^T    the input_grad role
    gradient of the second operand   first^T @ grad     the weight_grad role

and computes either one transposed when that gives its result a better layout
(second @ grad^T, grad^T @ first). The node saved both operands of the forward op; the GEMM's
operand that is one of them (the same memory seen through the same sizes and strides, up to a
transpose) says the role, and which side it stands on says whether the product is transposed.
When an operand matches both saved inputs (x @ x^T: both roles then have the same shape and
reduction length), or neither (saved tensors replaced by hooks), the role is unknown.
"""
from __future__ import annotations

import torch

# Backward node -> (forward op, saved attribute of its first operand, of its second operand)
GEMM_NODES = {
    "MmBackward0": ("mm", "_saved_self", "_saved_mat2"),
    "AddmmBackward0": ("addmm", "_saved_mat1", "_saved_mat2"),
    "BmmBackward0": ("bmm", "_saved_self", "_saved_mat2"),
    "BaddbmmBackward0": ("baddbmm", "_saved_batch1", "_saved_batch2"),
}


def _same_view(operand: torch.Tensor, saved) -> bool:
    """operand is `saved`, or a transpose of it: same start in memory, same (size, stride) pairs."""
    return (
        isinstance(saved, torch.Tensor)
        and operand.dim() == saved.dim()
        and operand.data_ptr() == saved.data_ptr()
        and sorted(zip(operand.shape, operand.stride())) == sorted(zip(saved.shape, saved.stride()))
    )


def backward_gemm_role(node, a: torch.Tensor, b: torch.Tensor) -> tuple[str, str, bool] | None:
    """(forward op, role, transposed) of the GEMM a @ b run inside backward `node`, or None.

    `transposed` is True when a @ b is the transpose of the role's GEMM in the orientation
    above (so the role's GEMM is b^T @ a^T).
    """
    entry = GEMM_NODES.get(node.name())
    if entry is None:
        return None
    op, first_name, second_name = entry
    first, second = getattr(node, first_name, None), getattr(node, second_name, None)
    # (role, saved operand, the side it stands on in the role's own orientation)
    sides = (("input_grad", second, 1), ("weight_grad", first, 0))
    found = {(role, side != home) for role, saved, home in sides
             for side, operand in enumerate((a, b)) if _same_view(operand, saved)}
    if len(found) != 1:
        return None
    role, transposed = found.pop()
    return op, role, transposed
