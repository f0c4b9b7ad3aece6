"""Known answers for the symmetry-breaking perturbation (appendix G)."""
import math

import pytest
import torch
from torch import nn

from probes.perturbation import perturbation_ratio, symmetry_perturbation


def test_identical_channels_have_no_perturbation(generator):
    feature = torch.randn(5, 1, 6, 6, generator=generator)
    assert perturbation_ratio(feature.expand(5, 8, 6, 6)) == pytest.approx(0.0, abs=1e-15)
    assert perturbation_ratio(torch.zeros(2, 3)) == 0.0


def test_independent_channels_keep_most_of_their_norm(generator):
    channels = 16
    feature = torch.randn(64, channels, 8, 8, generator=generator)
    # zero-mean i.i.d. channels: removing the channel mean keeps (C-1)/C of the energy; with
    # 65536 elements the ratio's relative spread is ~0.3%, so 1% is a safe bound
    assert perturbation_ratio(feature) == pytest.approx(math.sqrt((channels - 1) / channels), rel=0.01)


def test_one_channel_offset_gives_the_exact_ratio():
    feature = torch.ones(2, 4)
    feature[:, 0] += 4.0  # rows (5, 1, 1, 1): mean 2, orthogonal part (3, -1, -1, -1)
    assert perturbation_ratio(feature) == pytest.approx(math.sqrt(12 / 28), abs=1e-15)


def symmetric_net(generator):
    """conv1's filters are identical (forward-symmetric); conv2 treats its inputs alike (backward-symmetric)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(4, 2, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(1, 3, 3, 3, generator=generator).expand(4, 3, 3, 3))
        net[2].weight.copy_(torch.randn(2, 1, 3, 3, generator=generator).expand(2, 4, 3, 3))
        net[4].weight.copy_(torch.randn(3, 50, generator=generator))
    return net


def test_symmetry_perturbation_of_a_step(generator):
    net = symmetric_net(generator)
    x = torch.randn(6, 3, 5, 5, generator=generator)
    y = torch.randint(0, 3, (6,), generator=generator)
    records = {r["name"]: r for r in symmetry_perturbation(net, x, y, nn.functional.cross_entropy)}
    assert list(records) == ["0", "2", "4"]
    # float64 channel mean of 4 equal float32 values is exact; allow 1e-15 for the division
    assert records["0"]["forward"] == pytest.approx(0.0, abs=1e-15)
    assert records["0"]["backward"] == pytest.approx(0.0, abs=1e-15)
    assert records["2"]["forward"] > 0.01 and records["4"]["backward"] > 0.01
    assert net[0].weight.grad is not None


def test_symmetry_perturbation_steps_the_optimizer(generator):
    net = symmetric_net(generator)
    before = net[4].weight.detach().clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 3, 5, 5, generator=generator)
    symmetry_perturbation(net, x, torch.tensor([0, 2]), nn.functional.cross_entropy, optimizer)
    assert not torch.equal(before, net[4].weight)
    assert not any(module._forward_hooks for module in net.modules()), "hooks must be removed"
