"""SGD with momentum and weight decay, as the runs train, without torch.optim.

torch.optim's optimizers import torch._dynamo when built and on every step (1.2 s of a run's
start on the 2-core CPU machine, about a twentieth of the quick run). `SGD` makes the same
updates as torch.optim.SGD(foreach=False), torch's default on the CPU, with the same tensor
operations in the same order, so the same bits (tests/test_sgd.py checks it step by step), and
its state_dict has torch.optim.SGD's layout, so checkpoints of either load into the other. On a
GPU torch.optim.SGD's default is its multi-tensor path instead; that one is not compared.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch

# torch.optim.SGD's group options, at the values SGD supports (only lr, momentum and weight decay vary)
FIXED_OPTIONS = {"dampening": 0, "nesterov": False, "maximize": False, "foreach": None, "differentiable": False,
                 "fused": None}


class SGD:
    """param <- param - lr * buf, buf <- momentum * buf + (grad + weight_decay * param) (buf starts as the
    first such gradient; without momentum the gradient itself), over one group of parameters."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        params = list(params)
        if not params:
            raise ValueError("SGD got an empty parameter list")
        self.param_groups = [{"params": params, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                              **FIXED_OPTIONS}]
        self.state: defaultdict[torch.Tensor, dict] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.param_groups[0]["params"]:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        group = self.param_groups[0]
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        for param in group["params"]:
            if param.grad is None:
                continue
            grad = param.grad
            if weight_decay != 0:
                grad = grad.add(param, alpha=weight_decay)
            if momentum != 0:
                state = self.state[param]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad)
                grad = buf
            param.add_(grad, alpha=-lr)

    def state_dict(self) -> dict:
        """torch.optim.SGD's layout: parameters by their index, the group's options and their indices."""
        params = self.param_groups[0]["params"]
        index = {id(param): i for i, param in enumerate(params)}
        state = {index[id(param)]: dict(values) for param, values in self.state.items()}
        group = {key: value for key, value in self.param_groups[0].items() if key != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(params)))}]}

    def load_state_dict(self, saved: dict) -> None:
        """Restore a state_dict of this class or of torch.optim.SGD over the same parameters; one
        that does not fit them raises ValueError."""
        groups, params = saved["param_groups"], self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            sizes = [len(group["params"]) for group in groups]
            raise ValueError(f"the saved optimizer holds parameter groups of sizes {sizes}; this one has one group "
                             f"of {len(params)} parameters")
        other = {key: groups[0][key] for key, value in FIXED_OPTIONS.items() if groups[0].get(key, value) != value}
        if other:
            raise ValueError(f"the saved optimizer was built with {other}; this SGD has {FIXED_OPTIONS}")
        by_index = dict(zip(groups[0]["params"], params))
        self.state = defaultdict(dict)
        for index, values in saved["state"].items():
            param = by_index[index]
            self.state[param] = {key: value.to(param.device, param.dtype) if torch.is_tensor(value) else value
                                 for key, value in values.items()}
        for key in ("lr", "momentum", "weight_decay"):
            self.param_groups[0][key] = groups[0][key]
