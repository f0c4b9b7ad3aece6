"""kernels.patch's report: what it patched, what it left on torch's kernels and why, strict
mode, and the splits it fits to each layer from a shape pass over an example input."""
import pytest
import torch
from torch import nn

from kernels import Conv2d, Linear, Policy, Reduction, patch, reducing_layers

NOISY = Reduction("splitk", splits=12, seed=2)


class Mixed(nn.Module):
    """A conv and a linear layer kernels can take, beside reducing layers it cannot."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.wave = nn.Conv1d(3, 3, 3, padding=1)
        self.up = nn.ConvTranspose2d(3, 3, 2, stride=2)
        self.pair = nn.Bilinear(4, 4, 5)
        self.head = nn.Linear(5, 7)

    def forward(self, x):
        y = self.conv(x)
        y = self.up(self.wave(y.flatten(2)).view_as(y))
        features = y.mean(dim=(2, 3)).repeat(1, 2)[:, :4]
        return self.head(self.pair(features, features))


def test_patch_reports_and_warns_about_the_reducing_layers_it_leaves_native():
    model = Mixed()
    with pytest.warns(UserWarning, match=r"left 3 reducing layer\(s\) on torch's own kernels: 'wave' \(Conv1d"):
        report = patch(model, NOISY)
    assert report.patched == ["conv", "head"] and report.count == 2
    assert list(report.skipped) == ["wave", "up", "pair"]
    assert report.skipped["up"] == "ConvTranspose2d: no drop-in (kernels has Conv2d and Linear)"
    assert type(model.conv) is Conv2d and type(model.head) is Linear
    assert type(model.wave) is nn.Conv1d and type(model.up) is nn.ConvTranspose2d and type(model.pair) is nn.Bilinear


def test_strict_patch_refuses_and_changes_nothing():
    model = Mixed()
    with pytest.raises(ValueError, match=r"strict.* 3 reducing layer\(s\): 'wave' \(Conv1d.*'up' .*'pair' \(Bilinear"):
        patch(model, NOISY, strict=True)
    assert type(model.conv) is nn.Conv2d and type(model.head) is nn.Linear


def test_a_model_kernels_can_take_whole_patches_silently(recwarn):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    report = patch(model, None, strict=True)
    assert report.patched == [name for name, _ in reducing_layers(model)] == ["0", "2"]
    assert report.skipped == {} and report.caps == {} and not recwarn.list


def test_example_input_caps_each_roles_splits_at_its_reduction_length():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 10), nn.Linear(10, 20))
    policy = Policy(forward=Reduction("splitk", splits=12), input_grad=Reduction("fixed", splits=12),
                    weight_grad=Reduction("atomic", splits=12))
    report = patch(model, policy, example_input=torch.zeros(5, 1, 8, 8))
    # forward K: 1*9, 4*9, 64, 10; input_grad K: 4*9, 4*9, 10, 20; weight_grad K: 5*8*8, 5*4*4, 5, 5
    assert report.caps == {"0": {"forward": 9}, "3": {"input_grad": 10, "weight_grad": 5},
                           "4": {"forward": 10, "weight_grad": 5}}, report.caps
    assert model[0].policy.forward == Reduction("splitk", splits=9), "the caps are recorded on the layer"
    assert model[0].policy.input_grad == policy.input_grad and model[3].policy.weight_grad.mode == "atomic"
    assert model[1].policy == policy, "a layer long enough in every role keeps the policy"
    x = torch.randn(5, 1, 8, 8, requires_grad=True)
    model(x).sum().backward()  # every role runs with the fitted splits
    assert x.grad.shape == x.shape


def test_the_shape_pass_counts_leading_dims_changes_no_state_and_skips_unreached_layers():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(3)
            self.proj = nn.Linear(6, 6)
            self.unused = nn.Linear(6, 2)

        def forward(self, x):
            return self.proj(self.norm(x))

    model = Tokens().train()
    report = patch(model, Reduction("fixed", splits=6), example_input=torch.randn(1, 3, 6))
    assert report.caps == {"proj": {"weight_grad": 3}}, "weight gradient over batch x tokens = 1 x 3"
    assert "unused" not in report.caps and model.unused.policy.weight_grad.splits == 6
    assert model.training and model.norm.num_batches_tracked.item() == 0, "eval pass, then train mode again"


def test_patching_again_fits_the_new_policy():
    model = nn.Sequential(nn.Linear(3, 4))
    example = torch.zeros(2, 3)
    assert patch(model, Reduction("fixed", splits=3), example_input=example).caps == {"0": {"weight_grad": 2}}
    report = patch(model, Reduction("splitk", splits=4, seed=1), example_input=example, backend="emulate")
    assert report.caps == {"0": {"forward": 3, "weight_grad": 2}} and model[0].backend == "emulate"
    assert model[0].policy.input_grad == Reduction("splitk", splits=4, seed=1)


def test_a_bad_example_input_is_named_and_changes_nothing():
    model = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="example_input: the model's forward pass failed on it"):
        patch(model, NOISY, example_input=torch.zeros(2, 5))
    assert type(model[0]) is nn.Linear
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        patch("model", NOISY)
