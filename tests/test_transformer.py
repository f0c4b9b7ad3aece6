"""nets.transformer: a stock-module vision transformer, and how far patch and policy_mode reach into it."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kernels
import nets
from nets.training.config import build_config
from nets.training.models import build_model
from nets.transformer import Transformer, sinusoidal_positions


def test_tokens_logits_and_positions(generator):
    torch.manual_seed(0)
    model = Transformer(in_channels=3, num_classes=7, depth=1, width=16, heads=2, patch=4)
    images = torch.randn(5, 3, 8, 12, generator=generator)
    tokens = model.tokens(images)
    assert tokens.shape == (5, 6, 48)
    assert torch.equal(tokens[1, 4], images[1, :, 4:8, 4:8].reshape(-1))  # patch row 1, column 1
    assert model(images).shape == (5, 7)
    expected = torch.tensor([math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)])
    assert torch.allclose(sinusoidal_positions(3, 4)[2], expected)
    assert isinstance(nets.build("transformer", in_channels=1), Transformer)


def test_bad_options_are_named(generator):
    with pytest.raises(ValueError, match="multiple of 2 \\* heads"):
        Transformer(width=10, heads=2)
    with pytest.raises(ValueError, match="patch=3"):
        Transformer(patch=3)(torch.randn(1, 1, 8, 8, generator=generator))


def test_patch_leaves_attention_to_torch_and_the_mode_takes_every_matmul(generator):
    torch.manual_seed(0)
    model = Transformer(depth=1, width=16)
    images, labels = torch.randn(4, 1, 8, 8, generator=generator), torch.tensor([0, 1, 2, 3])
    with pytest.warns(UserWarning, match="torch's own kernels"):
        report = kernels.patch(Transformer(depth=1, width=16), kernels.Reduction("fixed"))
    assert set(report.skipped) == {"encoder.layers.0.self_attn", "encoder.layers.0.self_attn.out_proj"}
    with kernels.policy_mode(kernels.Reduction("fixed", splits=2)) as mode:
        F.cross_entropy(model(images), labels).backward()
    assert mode.report.share == 1.0
    assert {("bmm", role) for role in kernels.ROLES} <= set(mode.report.controlled)


def train(policy, steps=2, mode=kernels.policy_mode):
    """`steps` SGD steps of a small transformer under `mode`; its final weights."""
    torch.manual_seed(0)
    model = Transformer(depth=1, width=16)
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(6, 1, 8, 8, generator=generator), torch.randint(0, 10, (6,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with mode(policy), kernels.counting():
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("mode", [kernels.policy_mode, kernels.function_policy_mode], ids=["dispatch", "function"])
def test_training_under_the_mode_replays_fixed_and_seeded_orders(mode):
    fixed = train(kernels.Reduction("fixed", splits=2), mode=mode)
    assert torch.equal(fixed, train(kernels.Reduction("fixed", splits=2), mode=mode))
    seeded = train(kernels.Reduction("splitk", splits=3, seed=5), mode=mode)
    assert torch.equal(seeded, train(kernels.Reduction("splitk", splits=3, seed=5), mode=mode))
    assert not torch.equal(seeded, train(kernels.Reduction("splitk", splits=3, seed=6), mode=mode))
    assert torch.isfinite(train(kernels.Reduction("atomic", splits=3), mode=mode)).all()


def test_run_options_build_the_transformer():
    digits = (1, (8, 8), 10)
    model = build_model(build_config("quick", {"net": "transformer", "depth": 1}), *digits)
    assert isinstance(model, Transformer) and len(model.encoder.layers) == 1 and model.head.in_features == 32
    with pytest.raises(ValueError, match="--init='zero' is not allowed for --net transformer"):
        build_model(build_config("quick", {"net": "transformer", "init": "zero"}), *digits)
    with pytest.raises(ValueError, match="--stem-dropout"):
        build_model(build_config("quick", {"net": "transformer", "stem_dropout": 0.1}), *digits)
