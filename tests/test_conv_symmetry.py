"""Channel symmetry through the three conv roles: the property the paper's experiment rests on.

Identical input channels and identical filters make every output channel, every input-gradient
channel and every weight-gradient row the same exact sum of the same chunk partials; only the
order in which the partials are added can tell them apart. Fixed mode and a per-call splitk
order keep them bitwise identical; a per-element splitk order makes some of them differ.
"""
import pytest
import torch

from kernels.calls import counting
from kernels.conv import conv2d
from kernels.reduction import Policy, Reduction

ROLES = ("forward", "input_grad", "weight_grad")
# With identical channels the forward and input-gradient K (channel-major) repeats every 9
# taps: splits that cut K at channel boundaries (8 chunks of 4 channels) give identical chunk
# partials, which every order adds to the same bits. 7 chunks of 41-42 terms cut through
# channels, so the partials differ and their order shows in the rounding.
SPLITS = 7


def symmetric_problem(generator, batch=2, c_in=32, c_out=32, size=12, kernel=3):
    """x with identical channels, w with one filter everywhere, an output gradient with identical channels.

    Random values and K = 288 in every role at stride 1 (forward 32*3*3, input_grad 32*3*3,
    weight_grad 2*12*12), so adding SPLITS chunk partials in different orders rounds differently.
    """
    x = torch.randn(batch, 1, size, size, generator=generator).expand(-1, c_in, -1, -1).contiguous()
    w = torch.randn(1, 1, kernel, kernel, generator=generator).expand(c_out, c_in, -1, -1).contiguous()
    return x, w


def run_roles(x, w, stride, policy, generator):
    x = x.clone().requires_grad_()
    w = w.clone().requires_grad_()
    with counting():
        y = conv2d(x, w, stride=stride, padding=1, policy=policy)
        gy = torch.randn(y.shape[0], 1, *y.shape[2:], generator=generator).expand_as(y).contiguous()
        gx, gw = torch.autograd.grad(y, (x, w), gy)
    return {"forward": y, "input_grad": gx, "weight_grad": gw}


def differing_channels(t: torch.Tensor, dim: int) -> int:
    """How many slices along `dim` differ in any bit from slice 0."""
    slices = t.movedim(dim, 0).reshape(t.shape[dim], -1)
    return int((slices != slices[:1]).any(1).sum())


def channel_report(results) -> dict:
    """Differing output channels, input-gradient channels, weight-gradient rows and columns."""
    return {
        "forward channels": differing_channels(results["forward"], 1),
        "input_grad channels": differing_channels(results["input_grad"], 1),
        "weight_grad rows (c_out)": differing_channels(results["weight_grad"], 0),
        "weight_grad columns (c_in)": differing_channels(results["weight_grad"], 1),
    }


def test_the_problem_is_symmetric_in_exact_arithmetic(generator):
    x, w = symmetric_problem(generator)
    results = run_roles(x.double(), w.double(), 1, Reduction(precision="fp64", accumulate="fp64"), generator)
    assert all(count == 0 for count in channel_report(results).values())


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(
    "reduction",
    [
        Reduction(),
        Reduction("fixed", splits=SPLITS),
        Reduction("splitk", splits=SPLITS, seed=4, granularity="call"),
        Reduction("splitk", splits=SPLITS, seed=4, granularity="call", precision="bf16", accumulate="fp16"),
    ],
    ids=lambda r: r.describe(),
)
def test_fixed_and_per_call_orders_keep_every_channel_bitwise_identical(generator, reduction, stride):
    x, w = symmetric_problem(generator)
    report = channel_report(run_roles(x, w, stride, reduction, generator))
    assert all(count == 0 for count in report.values()), f"{reduction.describe()}: differing slices {report}"


def test_per_tile_order_keeps_channels_within_a_tile_identical(generator):
    """All 32 channels lie in one 64-row order tile of m, so each column has one order."""
    x, w = symmetric_problem(generator)
    report = channel_report(run_roles(x, w, 1, Reduction("splitk", splits=SPLITS, granularity="tile"), generator))
    kept = ("forward channels", "input_grad channels", "weight_grad rows (c_out)")
    assert all(report[name] == 0 for name in kept), report


@pytest.mark.parametrize("stride", [1, 2])
def test_per_element_order_breaks_the_symmetry_in_every_role(generator, stride):
    x, w = symmetric_problem(generator)
    report = channel_report(run_roles(x, w, stride, Reduction("splitk", splits=SPLITS, seed=4), generator))
    assert all(count > 0 for count in report.values()), f"some slices should differ in every role: {report}"


@pytest.mark.parametrize("noisy_role", ROLES)
def test_noise_can_be_switched_on_in_one_role_alone(generator, noisy_role):
    x, w = symmetric_problem(generator)
    policy = Policy(**{noisy_role: Reduction("splitk", splits=SPLITS, seed=4)})
    results = run_roles(x, w, 1, policy, generator)
    for role in ROLES:
        # the output gradient is drawn symmetric, independent of the forward's result, so
        # only the noisy role itself can break the symmetry
        dims = (1,) if role != "weight_grad" else (0, 1)
        broken = sum(differing_channels(results[role], d) for d in dims)
        assert (broken > 0) == (role == noisy_role), f"{role} with noise in {noisy_role}: {broken} differing slices"
