"""ReplicaMLP: the one-hidden-layer ReLU network of the paper's Figure 1 / Appendix E.

f(x) = W2 ReLU(W1 x + b1) + b2 on flattened inputs. W1 has `width` rows made of
width / replicas unique He-initialized rows, each repeated `replicas` times, plus optional
independent noise per replica; W2 is He-initialized, b1 and b2 are 0.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .checks import check_int, check_real


class ReplicaMLP(nn.Module):
    """Hidden row j of W1 is a replica of unique feature j // replicas (replicas are contiguous).

    W1 = repeat(U) + noise * N, where U (width/replicas, in_features) and N (width, in_features)
    are independent draws of the He normal init, std sqrt(2 / in_features). Appendix E adds eps
    times a "noise" term to each replica; drawing it on the He scale makes `noise` the size of
    the perturbation relative to the features themselves (noise=1 is as large as a feature),
    independent of in_features. With noise=0 every group of `replicas` rows is bitwise identical.
    W2 (num_classes, width) is He normal, std sqrt(2 / width), so replicas connect to the output
    with different weights and backpropagation alone can separate them, as the paper notes.
    Random draws come from torch's global generator. The defaults are the paper's 784-256-10
    network on flattened 28x28 MNIST images.
    """

    def __init__(self, in_features: int = 784, width: int = 256, replicas: int = 1, noise: float = 0.0,
                 num_classes: int = 10):
        super().__init__()
        check_int("in_features", in_features)
        check_int("width", width)
        check_int("replicas", replicas)
        if width % replicas:
            raise ValueError(f"width={width} is not a multiple of replicas={replicas}; "
                             "each unique feature needs exactly `replicas` rows")
        self.noise = check_real("noise", noise, 0.0, math.inf)
        check_int("num_classes", num_classes)
        self.replicas = replicas
        self.unique_features = width // replicas
        self.hidden = nn.Linear(in_features, width)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(width, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        in_features = self.hidden.in_features
        he_std = math.sqrt(2.0 / in_features)
        unique = torch.randn(self.unique_features, in_features) * he_std
        weight = unique.repeat_interleave(self.replicas, dim=0)
        if self.noise > 0:
            weight += self.noise * he_std * torch.randn_like(weight)
        self.hidden.weight.copy_(weight)
        self.hidden.bias.zero_()
        self.fc.weight.normal_(0.0, math.sqrt(2.0 / self.fc.in_features))
        self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.hidden(x.flatten(1))))
