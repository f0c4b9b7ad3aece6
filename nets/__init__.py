"""The paper's networks (ConstNet, LeakyNet, the Wide-ResNet baseline, the replica MLP) and datasets.

Every network is a plain `torch.nn.Module` built from `nn.Conv2d` / `nn.Linear`, so
`kernels.patch` can swap its reductions, except the small vision transformer (nets.transformer),
whose attention only `kernels.policy_mode` reaches; `build(name, **options)` constructs one by name and
`nets.data.load_dataset` provides the data. Above the networks: nets.training (training runs),
nets.workloads and nets.suite (short seeded runs for the probes, the fingerprint suite) and
nets.experiments (the paper's grids, running them, reading run directories, reports).
"""
from .constnet import ConstNet
from .leakynet import LeakyNet
from .mlp import ReplicaMLP
from .registry import NETWORKS, build
from .transformer import Transformer
from .wideresnet import WideResNet

__all__ = ["NETWORKS", "ConstNet", "LeakyNet", "ReplicaMLP", "Transformer", "WideResNet", "build"]
