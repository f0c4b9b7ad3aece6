"""The paper's networks (ConstNet, LeakyNet, the Wide-ResNet baseline, the replica MLP) and datasets.

Every network is a plain `torch.nn.Module` built from `nn.Conv2d` / `nn.Linear`, so
`kernels.patch` can swap its reductions; `build(name, **options)` constructs one by name and
`nets.data.load_dataset` provides the data.
"""
from .constnet import ConstNet
from .leakynet import LeakyNet
from .mlp import ReplicaMLP
from .registry import NETWORKS, build, reduction_layers
from .wideresnet import WideResNet

__all__ = ["NETWORKS", "ConstNet", "LeakyNet", "ReplicaMLP", "WideResNet", "build", "reduction_layers"]
