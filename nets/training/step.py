"""One SGD training step, shared by training runs and the probes' short seeded runs."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from kernels.dispatch import without_policy_mode

from .sgd import SGD


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> SGD:
    """SGD (no Nesterov) over every parameter."""
    return SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_step(model: nn.Module, optimizer: SGD, images: torch.Tensor, labels: torch.Tensor,
               scaler: torch.amp.GradScaler | None = None, autocast=nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, cross-entropy loss, backward and an optimizer step; returns (loss, logits).

    `scaler` scales the loss (fp16 operands); `autocast` is a context factory for the forward.
    """
    with without_policy_mode():  # no matmul or convolution
        optimizer.zero_grad(set_to_none=True)
    loss, logits = forward_backward(model, images, labels, scaler, autocast)
    optimizer_step(optimizer, scaler)
    return loss, logits


def forward_backward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     scaler: torch.amp.GradScaler | None = None, autocast=nullcontext) -> tuple[torch.Tensor, ...]:
    """Forward, cross-entropy loss and backward (gradients add into .grad); returns (loss, logits)."""
    model.train()
    with autocast():
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
    (loss if scaler is None else scaler.scale(loss)).backward()
    return loss, logits


def optimizer_step(optimizer: SGD, scaler: torch.amp.GradScaler | None = None) -> None:
    """The optimizer's step on the gradients in .grad (unscaled and skipped on inf/NaN with a scaler).

    SGD's update runs no matmul or convolution, so it runs outside a policy mode around the step.
    """
    with without_policy_mode():
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
