"""The drop-in kernels.Conv2d / kernels.Linear and kernels.patch."""
import copy

import pytest
import torch
from torch import nn

from kernels.calls import counting
from kernels.modules import Conv2d, Linear
from kernels.patch import patch
from kernels.reduction import Policy, Reduction

NOISY = Reduction("splitk", splits=4, seed=2)


def close(got, expected, scale, name):
    """fp32 results of sums of at most a few hundred terms: 1e-5 relative to their magnitude
    (u_fp32 * K ~ 6e-8 * 300 = 2e-5 in the worst case, far less on average)."""
    err = (got.double() - expected.double()).abs().max().item()
    assert err <= 1e-5 * scale, f"{name}: max error {err:.3e} > {1e-5 * scale:.3e}"


@pytest.mark.parametrize(
    "args,kwargs",
    [((3, 8, 3), {"padding": 1}), ((5, 7, 1), {"stride": 2, "bias": False}), ((4, 6, (3, 5)), {"padding": (1, 2)})],
)
def test_conv2d_has_torchs_parameters_init_and_state_dict(args, kwargs):
    torch.manual_seed(7)
    reference = nn.Conv2d(*args, **kwargs)
    torch.manual_seed(7)
    layer = Conv2d(*args, **kwargs, policy=NOISY)
    assert isinstance(layer, nn.Conv2d)
    assert list(layer.state_dict()) == list(reference.state_dict())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(layer.state_dict()[name], tensor), name
    layer.load_state_dict(reference.state_dict())
    assert layer.policy == Policy.uniform(NOISY) and layer.backend == "auto"


def test_conv2d_matches_torch_forward_and_gradients(generator):
    torch.manual_seed(0)
    reference = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    layer = Conv2d(6, 10, 3, stride=2, padding=1)
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(3, 6, 9, 11, generator=generator)
    gy = torch.randn(3, 10, 5, 6, generator=generator)
    for module in (reference, layer):
        module(x).backward(gy)
    close(layer(x), reference(x), reference(x).abs().max().item(), "forward")
    for name in ("weight", "bias"):
        expected = getattr(reference, name).grad
        close(getattr(layer, name).grad, expected, expected.abs().max().item(), f"{name}.grad")


def test_conv2d_takes_unbatched_input(generator):
    layer = Conv2d(3, 4, 3, padding=1)
    x = torch.randn(3, 5, 5, generator=generator)
    assert torch.equal(layer(x), layer(x.unsqueeze(0)).squeeze(0))


def test_conv2d_follows_its_policy_per_role(generator):
    layer = Conv2d(4, 4, 3, padding=1, policy=Policy(weight_grad=NOISY))
    x = torch.randn(2, 4, 6, 6, generator=generator)
    with counting() as counter:
        layer(x).sum().backward()
    assert counter.next_call == 1, "only the splitk weight gradient draws a call number"
    layer.policy = NOISY  # a plain attribute: a Reduction now rules every role
    with counting() as counter:
        layer(x.requires_grad_()).sum().backward()
    assert counter.next_call == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dilation": 2}, r"dilation=\(2, 2\) is not supported"),
        ({"groups": 2}, "groups=2 is not supported"),
        ({"padding_mode": "reflect", "padding": 1}, "padding_mode='reflect' is not supported"),
        ({"padding": "same"}, "padding='same' is a string"),
        ({"kernel_size": 2}, r"kernel_size=\(2, 2\) is not supported; kernel sizes must be odd"),
        ({"backend": "cudnn"}, "backend='cudnn' is not allowed"),
    ],
)
def test_conv2d_rejects_what_it_cannot_run(kwargs, match):
    arguments = {"in_channels": 4, "out_channels": 4, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        Conv2d(**arguments)


@pytest.mark.parametrize("layer", [lambda **kw: Conv2d(4, 4, 3, **kw), lambda **kw: Linear(4, 4, **kw)],
                         ids=["Conv2d", "Linear"])
def test_layers_refuse_a_device_or_dtype_they_cannot_have(layer):
    with pytest.raises(ValueError, match="device='bogus' is not a device"):
        layer(device="bogus")
    if torch.cuda.device_count() < 100:
        with pytest.raises(ValueError, match="device='cuda:99' is not available here"):
            layer(device="cuda:99")
    with pytest.raises(TypeError, match="dtype=torch.int32 is not allowed"):
        layer(dtype=torch.int32)
    assert layer(device=torch.device("cpu"), dtype=torch.float64).weight.dtype == torch.float64


def test_linear_has_torchs_parameters_and_matches_it_with_leading_dims(generator):
    torch.manual_seed(3)
    reference = nn.Linear(12, 5)
    torch.manual_seed(3)
    layer = Linear(12, 5, policy=Policy(weight_grad=NOISY))
    assert isinstance(layer, nn.Linear) and list(layer.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in reference.state_dict().items())
    x = torch.randn(2, 3, 12, generator=generator)
    gy = torch.randn(2, 3, 5, generator=generator)
    outputs = {}
    for name, module in (("torch", reference), ("kernels", layer)):
        xr = x.clone().requires_grad_()
        outputs[name] = module(xr)
        outputs[name].backward(gy)
        outputs[name + ".x.grad"] = xr.grad
    assert outputs["kernels"].shape == (2, 3, 5)
    close(outputs["kernels"], outputs["torch"], outputs["torch"].abs().max().item(), "forward")
    close(outputs["kernels.x.grad"], outputs["torch.x.grad"], outputs["torch.x.grad"].abs().max().item(), "input grad")
    for name in ("weight", "bias"):
        expected = getattr(reference, name).grad
        close(getattr(layer, name).grad, expected, expected.abs().max().item(), f"{name}.grad")


def test_linear_takes_a_single_vector_and_checks_features(generator):
    layer = Linear(6, 3, bias=False)
    x = torch.randn(6, generator=generator)
    assert layer(x).shape == (3,)
    with pytest.raises(ValueError, match=r"Linear expects inputs \(\.\.\., 6\), got shape \(2, 5\)"):
        layer(torch.randn(2, 5))


def test_linear_roles_draw_call_numbers_in_order(generator):
    layer = Linear(8, 4, policy=Policy(forward=NOISY, weight_grad=NOISY))
    with counting() as counter:
        layer(torch.randn(5, 8, generator=generator, requires_grad=True)).sum().backward()
    assert counter.next_call == 2, "forward and weight_grad are splitk, input_grad is fixed"


# ------------------------------------------------------------------ patch


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return x + self.conv(torch.relu(self.norm(x)))


def small_model():
    torch.manual_seed(11)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        Block(8),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.Conv2d(12, 12, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 10),
    ).eval()


def test_patch_keeps_outputs_weights_and_state_dict(generator):
    model = small_model()
    reference = copy.deepcopy(model)
    parameters = list(model.parameters())
    keys = list(model.state_dict())
    x = torch.randn(4, 3, 9, 9, generator=generator)

    assert patch(model, Policy.uniform(Reduction())).count == 5
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), parameters)), "the very same Parameter objects"
    kinds = [type(m) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert kinds == [Conv2d, Conv2d, Conv2d, Conv2d, Linear]
    expected = reference(x)
    close(model(x), expected, expected.abs().max().item(), "patched model output")


def test_patched_model_trains_with_its_existing_optimizer(generator):
    model = small_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    patch(model, Policy(weight_grad=NOISY))
    before = model[0].weight.detach().clone()
    loss = model(torch.randn(4, 3, 9, 9, generator=generator)).square().mean()
    loss.backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, before)


def test_patch_again_sets_the_new_policy(generator):
    model = small_model()
    patch(model, Reduction())
    assert patch(model, NOISY, backend="emulate").count == 5
    layers = [m for m in model.modules() if isinstance(m, (Conv2d, Linear))]
    assert all(m.policy == Policy.uniform(NOISY) and m.backend == "emulate" for m in layers)


def test_patch_a_bare_layer():
    layer = nn.Linear(3, 2)
    assert patch(layer, None).patched == [""] and isinstance(layer, Linear)


@pytest.mark.parametrize(
    "bad_layer,match",
    [
        (nn.Conv2d(8, 8, 3, padding=2, dilation=2), r"'1.conv' \(Conv2d: dilation=\(2, 2\) is not supported"),
        (nn.Conv2d(8, 8, 3, padding=1, groups=2), r"'1.conv' \(Conv2d: groups=2 is not supported"),
        (nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), "'1.conv'.*padding_mode='circular'"),
        (nn.Conv2d(8, 8, 3, padding="same"), "'1.conv'.*padding='same' is a string"),
        (nn.LazyConv2d(8, 3), "'1.conv'.*LazyConv2d subclasses nn.Conv2d"),
    ],
)
def test_patch_names_the_layer_it_cannot_honour(bad_layer, match):
    model = small_model()
    model[1].conv = bad_layer
    with pytest.raises(ValueError, match="strict.*" + match):
        patch(model, NOISY, strict=True)
    assert not any(isinstance(m, (Conv2d, Linear)) for m in model.modules()), "strict: nothing is patched"
    with pytest.warns(UserWarning, match=match):
        report = patch(model, NOISY)
    assert list(report.skipped) == ["1.conv"] and report.count == 4 and type(model[1].conv) is type(bad_layer)


def test_patch_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="backend='gpu' is not allowed"):
        patch(small_model(), None, backend="gpu")
