"""Which operations of a training step are bitwise non-deterministic on this device.

The audit runs one forward/backward pass of a copy of the model to capture every layer's input
and output gradient, then repeats each operation `runs` times on exactly those tensors and
compares the results bit for bit:

  - every conv / linear layer (patched or not): forward, input gradient, weight gradient, each
    alone (the layer's other parameters frozen), under the layer's own policy and backend;
  - every batch norm layer (train mode, from identical running statistics): forward, and the
    backward to its input, weight and bias;
  - pooling on the last 4-D feature map: global average, 2x2 average and 2x2 max pooling,
    forward and backward; the cross-entropy loss on the logits, forward and backward;
  - the SGD step (momentum 0.9, weight decay 5e-4) from identical parameters and gradients,
    and a whole training step from identical models.

Every repetition replays splitk call number 0 (a fresh CallCounter), so a seeded order counts
as deterministic, as it is by design; atomic reductions and non-deterministic library kernels
show up as differing.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .compare import compare


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


def _repeat(fn, runs: int) -> dict:
    """Run fn `runs` times (each replaying splitk call 0) and compare every result to the first."""
    results = []
    for _ in range(runs):
        with kernels.counting(kernels.CallCounter()):
            results.append(_as_tuple(fn()))
    n_differ, max_ulp = 0, 0.0
    for other in results[1:]:
        for first, again in zip(results[0], other):
            comparison = compare(first, again)
            n_differ += comparison.n_differ
            max_ulp = max(max_ulp, comparison.max_ulp or 0.0)
    return {"deterministic": n_differ == 0, "n_differ": n_differ, "max_ulp": max_ulp}


@contextmanager
def _only_requiring_grad(module: nn.Module, keep: tuple):
    """Temporarily let only the parameters in `keep` require grad."""
    saved = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(any(p is k for k in keep))
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _capture(model: nn.Module, inputs, targets, loss_fn) -> tuple[dict, torch.Tensor]:
    """Inputs and output gradients of every conv/linear/batch-norm layer, and the logits."""
    captured: dict[str, dict] = {}
    handles = []

    def hook(name):
        def record(module, args, output):
            entry = {"module": module, "input": args[0].detach(), "grad_out": None}
            captured[name] = entry
            if output.requires_grad:
                output.register_hook(lambda grad: entry.update(grad_out=grad.detach()))
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        logits = model(inputs)
        loss_fn(logits, targets).backward()
    finally:
        for handle in handles:
            handle.remove()
    return captured, logits.detach()


def _layer_rows(name: str, entry: dict, runs: int) -> list[dict]:
    layer, x, grad_out = entry["module"], entry["input"], entry["grad_out"]
    kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"

    def forward():
        with torch.no_grad():
            return layer(x)

    def input_grad():
        leaf = x.detach().requires_grad_(True)
        with _only_requiring_grad(layer, ()):
            return torch.autograd.grad(layer(leaf), leaf, grad_out)[0]

    def weight_grad():
        with _only_requiring_grad(layer, (layer.weight,)):
            return torch.autograd.grad(layer(x), layer.weight, grad_out)[0]

    roles = {"forward": forward, "input_grad": input_grad, "weight_grad": weight_grad}
    return [{"op": f"{kind} {name}", "role": role, **_repeat(fn, runs)} for role, fn in roles.items()]


def _batchnorm_rows(name: str, entry: dict, runs: int) -> list[dict]:
    layer, x, grad_out = entry["module"], entry["input"], entry["grad_out"]

    def forward():
        fresh = copy.deepcopy(layer).train()
        with torch.no_grad():
            return fresh(x), fresh.running_mean, fresh.running_var

    def backward():
        fresh = copy.deepcopy(layer).train()
        leaf = x.detach().requires_grad_(True)
        return torch.autograd.grad(fresh(leaf), (leaf, fresh.weight, fresh.bias), grad_out)

    return [{"op": f"batchnorm {name}", "role": role, **_repeat(fn, runs)}
            for role, fn in (("forward", forward), ("backward", backward))]


def _function_rows(op: str, fn, x: torch.Tensor, runs: int, seed: int) -> list[dict]:
    """Forward and backward of a parameter-free function, with a seeded output gradient."""
    with torch.no_grad():
        shape = fn(x).shape
    generator = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(shape, generator=generator).to(x.device, x.dtype)

    def forward():
        with torch.no_grad():
            return fn(x)

    def backward():
        leaf = x.detach().requires_grad_(True)
        return torch.autograd.grad(fn(leaf), leaf, grad_out)[0]

    return [{"op": op, "role": role, **_repeat(f, runs)} for role, f in (("forward", forward), ("backward", backward))]


def _sgd(model: nn.Module):
    return torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=5e-4)


def _optimizer_row(model: nn.Module, runs: int) -> dict:
    """One SGD step from identical parameters, gradients and (one step old) momentum."""
    start = copy.deepcopy(model)
    warm = _sgd(start)
    warm.step()  # creates the momentum buffers, so the audited step uses them

    def step():
        copied = copy.deepcopy(start)
        optimizer = _sgd(copied)
        optimizer.load_state_dict(warm.state_dict())
        optimizer.step()
        return tuple(p.detach().clone() for p in copied.parameters())

    return {"op": "sgd step", "role": "update", **_repeat(step, runs)}


def _training_step_row(model: nn.Module, inputs, targets, loss_fn, runs: int) -> dict:
    def step():
        copied = copy.deepcopy(model).train()
        copied.zero_grad(set_to_none=True)
        optimizer = _sgd(copied)
        loss_fn(copied(inputs), targets).backward()
        optimizer.step()
        return tuple(value.detach().clone() for value in copied.state_dict().values())

    return {"op": "training step", "role": "all", **_repeat(step, runs)}


def audit(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn=F.cross_entropy,
          runs: int = 2, seed: int = 0) -> list[dict]:
    """Rows {"op", "role", "deterministic", "n_differ", "max_ulp"} for every audited operation.

    The model itself is not changed (the audit works on deep copies).
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 2:
        raise ValueError(f"runs={runs!r} is not allowed; comparing needs an int >= 2")
    work = copy.deepcopy(model).train()
    captured, logits = _capture(work, inputs, targets, loss_fn)
    rows = []
    for name, entry in captured.items():
        if isinstance(entry["module"], nn.BatchNorm2d):
            rows += _batchnorm_rows(name, entry, runs)
        else:
            rows += _layer_rows(name, entry, runs)
    layer_inputs = [entry["input"] for entry in captured.values()]
    maps = [tensor for tensor in layer_inputs if tensor.dim() == 4 and tensor.shape[-1] >= 2]
    if maps:
        pools = {"global average pool": lambda t: t.mean(dim=(2, 3)),
                 "avg_pool2d 2x2": lambda t: F.avg_pool2d(t, 2), "max_pool2d 2x2": lambda t: F.max_pool2d(t, 2)}
        for op, fn in pools.items():
            rows += _function_rows(op, fn, maps[-1], runs, seed)
    rows += _function_rows("cross entropy", lambda t: loss_fn(t, targets), logits, runs, seed)
    rows.append(_optimizer_row(work, runs))
    rows.append(_training_step_row(model, inputs, targets, loss_fn, runs))
    return rows
