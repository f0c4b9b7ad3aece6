"""Checks shared by the ops: operand types, and whether a policy's roles can run a given call.

Every op checks its policy here, up front, for the roles the call will run (the gradient roles
only when grad is enabled and their operand requires it), so a bad `splits` fails at the
forward call, before any work, naming the role.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from .backends import check_backend_name
from .formats import FLOAT_INPUT_DTYPES
from .reduction import KERNEL_PRECISIONS, ROLES, Policy, Reduction, check_plain_int

TRITON_MAX_SPLITS = 65535  # the Triton kernels put chunks on grid axis 1, which CUDA caps at 65535


def check_float_tensor(name: str, x) -> None:
    """x must be a tensor of one of the floating dtypes the kernels read."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_INPUT_DTYPES:
        allowed = ", ".join(str(d).replace("torch.", "") for d in FLOAT_INPUT_DTYPES)
        raise TypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}; allowed: {allowed}")


def check_count(name: str, value) -> None:
    """value must be a plain int >= 0 (a layer size, a call number)."""
    check_plain_int(name, value)
    if value < 0:
        raise ValueError(f"{name}={value} is not allowed; {name} must be >= 0")


def check_flag(name: str, value) -> None:
    """value must be True or False (a tensor or other object has no single truth value to take)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")


def check_placement(device, dtype) -> None:
    """A layer's device= and dtype= arguments: a device this machine has, a floating dtype."""
    if device is not None:
        try:
            where = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device={device!r} is not a device; use e.g. 'cpu' or 'cuda:0'") from None
        if where.type == "cuda":
            count = torch.cuda.device_count()
            if where.index is not None and where.index >= count or count == 0:
                raise ValueError(f"device={device!r} is not available here: this machine has {count} CUDA "
                                 f"device(s); use 'cpu'" + (f" or 'cuda:0'..'cuda:{count - 1}'" if count else ""))
    if dtype is not None and dtype not in FLOAT_INPUT_DTYPES:
        allowed = ", ".join(str(d).replace("torch.", "") for d in FLOAT_INPUT_DTYPES)
        raise TypeError(f"dtype={dtype!r} is not allowed; allowed: {allowed}")


def check_module(name: str, value) -> None:
    """value must be a torch.nn.Module."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")


def check_reduction_on_backend(reduction: Reduction, backend: str, role: str) -> None:
    """Reject Reductions a resolved backend cannot honour, naming the role."""
    if backend not in ("triton", "interpret"):
        return
    if reduction.precision not in KERNEL_PRECISIONS:
        raise ValueError(
            f"{role}: precision={reduction.precision!r} is a reference path of the emulate backend; "
            f"backend={backend!r} allows precision {', '.join(map(repr, KERNEL_PRECISIONS))}"
        )
    if reduction.splits > TRITON_MAX_SPLITS:
        raise ValueError(
            f"{role}: splits={reduction.splits} is more than backend={backend!r} allows "
            f"({TRITON_MAX_SPLITS}, the CUDA grid limit)"
        )


def check_splits(reduction: Reduction, length: int, role: str) -> None:
    """splits must not exceed the reduction length K; an empty reduction (K = 0) takes any."""
    if length > 0 and reduction.splits > length:
        raise ValueError(
            f"{role}: splits={reduction.splits} exceeds the reduction length K={length}; "
            f"choose splits between 1 and {length}"
        )


def roles_to_run(input_needs_grad: bool, weight_needs_grad: bool) -> tuple[str, ...]:
    """The roles a call runs: the forward always, a gradient role when grad mode will record it."""
    grad = torch.is_grad_enabled()
    runs = {"forward": True, "input_grad": grad and input_needs_grad, "weight_grad": grad and weight_needs_grad}
    return tuple(role for role in ROLES if runs[role])


def check_policy(policy: Policy, backend: str, lengths: dict, roles) -> None:
    """Reject, before any work, the roles of a call that `policy` cannot run on `backend`."""
    for role in roles:
        reduction = getattr(policy, role)
        check_reduction_on_backend(reduction, backend, role)
        check_splits(reduction, lengths[role], role)


def refuse_double_backward(op: str) -> None:
    """Backward passes run under the policy once; differentiating them again is refused."""
    if torch.is_grad_enabled():
        raise NotImplementedError(
            f"{op}: double backward (create_graph=True) is not supported, as each backward GEMM "
            "follows the policy once; use backend='native' for higher-order gradients"
        )


def called_by_kernels() -> bool:
    """For a policy mode's handler: whether the op it was handed was called by code of this
    package (the chunk products of a patched layer or of kernels.matmul are GEMMs too, and follow
    their own policy already).

    The caller is the first frame outside torch above the handler; an op run by torch's
    autograd engine has the code that called backward() there.
    """
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "torch" and not module.startswith("torch."):
            return module.partition(".")[0] == __package__
        frame = frame.f_back
    return False


def operand_refusal(*operands) -> str | None:
    """Why the kernels cannot take these operands (dtype, devices), or None if they can."""
    dtypes = {t.dtype for t in operands}
    if len(dtypes) != 1 or not dtypes <= set(FLOAT_INPUT_DTYPES):
        return "dtype " + "/".join(sorted(str(d).replace("torch.", "") for d in dtypes))
    if len({t.device for t in operands}) != 1:
        return "operands on several devices"
    return None


def conv_refusal(x, w, dilation, groups, *others) -> str | None:
    """For a policy mode: why kernels.conv2d cannot run a 2-D convolution of x (N, C, H, W) by w
    with this dilation (pair) and groups, or None if it can (`others`: more operands, a bias)."""
    if groups != 1:
        return f"groups={groups}"
    if any(d != 1 for d in dilation):
        return f"dilation={tuple(dilation)}"
    if any(k % 2 == 0 for k in w.shape[2:]):
        return f"even kernel {tuple(w.shape[2:])}"
    if x.shape[1] != w.shape[1]:
        return "channel mismatch"
    return operand_refusal(x, w, *others)


def check_mode_backend(backend) -> str:
    """backend itself if a policy mode can run on it: any but native."""
    if check_backend_name(backend) == "native":
        raise ValueError("backend='native' runs torch's own kernels: run the model without policy_mode")
    return backend
