"""The paper's networks: shapes, parameter counts, and the properties of their initializations."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import nets
from kernels import reducing_layers
from nets import ConstNet, LeakyNet, ReplicaMLP, WideResNet, build

FLOAT32_EPS = torch.finfo(torch.float32).eps
SMALL = dict(depth=10, widen=1)  # 2 blocks per stage, widths 16/16/32/64: fast on CPU
SMALL_WIDENING = dict(depth=10, widen=2)  # widths 16/32/64/128: every stage starts with a projection


# ---------------------------------------------------------------- helpers

def stage_widths(widen):
    return [16, 16 * widen, 32 * widen, 64 * widen]


def single_conv_blocks(depth, widen):
    """(in, out, stride) of every block of a net with one conv per block, from the WRN formulae."""
    n = (depth - 4) // 3
    widths = stage_widths(widen)
    return [
        (widths[s] if b == 0 else widths[s + 1], widths[s + 1], (1, 2, 2)[s] if b == 0 else 1)
        for s in range(3) for b in range(n)
    ]


def constnet_parameters(depth, widen, in_channels=3, num_classes=10, batchnorm=True):
    total = 9 * in_channels * 16
    for c_in, c_out, stride in single_conv_blocks(depth, widen):
        total += 9 * c_in * c_out + (2 * c_in if batchnorm else 0)
        if c_in != c_out or stride != 1:
            total += c_in * c_out  # 1x1 projection skip
    return total + 64 * widen * num_classes + num_classes


def leakynet_parameters(depth, widen, in_channels=3, num_classes=10):
    total = 9 * in_channels * 16
    for index, (c_in, c_out, _) in enumerate(single_conv_blocks(depth, widen)):
        total += 9 * c_in * c_out + (2 * c_out if index % 2 else 0)
    return total + 64 * widen * num_classes + num_classes


def wideresnet_parameters(depth, widen, in_channels=3, num_classes=10):
    n = (depth - 4) // 6
    widths = stage_widths(widen)
    total = 9 * in_channels * 16
    for s in range(3):
        for b in range(n):
            c_in, c_out = (widths[s] if b == 0 else widths[s + 1]), widths[s + 1]
            total += 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out
            if b == 0 and (c_in != c_out or s > 0):
                total += c_in * c_out
    return total + 2 * widths[3] + widths[3] * num_classes + num_classes


def count(model):
    return sum(p.numel() for p in model.parameters())


def record_activations(model):
    """Run-time outputs of every named submodule, in call order, via forward hooks."""
    seen = []
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: seen.append((name, o)))
        for name, module in model.named_modules() if name
    ]
    return seen, handles


def assert_channels_identical(name, activation):
    """Every channel bitwise equal to channel 0 (dim 1), with a verbose failure."""
    differs = (activation != activation[:, :1]).flatten(2).any(-1).any(0)
    assert not differs.any(), (
        f"{name}: {int(differs.sum())} of {activation.shape[1]} channels differ from channel 0, "
        f"first at channel {int(differs.nonzero()[0])}"
    )


def assert_close(name, actual, expected, atol):
    error = (actual.double() - expected.double()).abs()
    worst = int(error.argmax())
    assert error.max() <= atol, (
        f"{name}: {int((error > atol).sum())} of {error.numel()} values off by more than {atol:.3g}; "
        f"worst {float(error.max()):.3g} at flat index {worst}"
    )


# ---------------------------------------------------------------- parameter counts

def test_constnet_wrn_16_10_parameter_count():
    model = ConstNet()
    assert count(model) == constnet_parameters(16, 10) == 17_115_354


def test_leakynet_wrn_16_10_parameter_count():
    model = LeakyNet()
    assert count(model) == leakynet_parameters(16, 10) == 16_853_562


def test_wideresnet_16_10_parameter_count():
    model = WideResNet()
    assert count(model) == wideresnet_parameters(16, 10) == 17_116_634


@pytest.mark.parametrize("depth, widen, batchnorm", [(10, 1, True), (10, 2, False), (7, 3, True)])
def test_small_parameter_counts(depth, widen, batchnorm):
    assert count(ConstNet(depth=depth, widen=widen, batchnorm=batchnorm, in_channels=1, num_classes=4)) == \
        constnet_parameters(depth, widen, 1, 4, batchnorm)
    assert count(LeakyNet(depth=depth, widen=widen, in_channels=1, num_classes=4)) == \
        leakynet_parameters(depth, widen, 1, 4)


def test_paper_shape_of_constnet():
    model = ConstNet()
    assert len(model.blocks) == 12
    assert [(b.conv.in_channels, b.conv.out_channels, b.conv.stride[0]) for b in model.blocks] == \
        single_conv_blocks(16, 10)
    assert [b.skip is not None for b in model.blocks] == [True, False, False, False] * 3
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)


# ---------------------------------------------------------------- ConstNet at init="zero"

@pytest.mark.parametrize("options", [SMALL, SMALL_WIDENING, dict(SMALL, batchnorm=False)])
def test_constnet_zero_init_every_channel_identical_and_logits_zero(options, generator):
    model = ConstNet(**options)
    seen, _ = record_activations(model)
    logits = model(torch.randn(6, 3, 16, 16, generator=generator))
    assert torch.equal(logits, torch.zeros_like(logits)), f"logits not exactly zero: max |z| {logits.abs().max()}"
    hidden = [(name, out) for name, out in seen if out.dim() == 4]
    assert len(hidden) >= 3 * len(model.blocks)
    for name, out in hidden:
        assert_channels_identical(name, out)


def test_constnet_stem_is_channel_mean(generator):
    model = ConstNet(**SMALL)
    x = torch.randn(4, 3, 12, 12, generator=generator)
    expected = x.double().mean(1, keepdim=True).expand(-1, 16, -1, -1)
    # one 3-term float32 sum: a few ulps of the largest input
    assert_close("stem", model.stem(x), expected, atol=4 * FLOAT32_EPS * float(x.abs().max()))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_constnet_zero_init_blocks_are_identity_or_channel_average(batchnorm, generator):
    model = ConstNet(**SMALL_WIDENING, batchnorm=batchnorm)
    x = torch.randn(4, 16, 16, 16, generator=generator)  # channels differ on purpose
    for index, block in enumerate(model.blocks):
        out = block(x)
        if block.skip is None:
            assert torch.equal(out, x), f"block {index} is not bitwise the identity"
        else:
            h = F.batch_norm(x.double(), None, None, training=True, eps=1e-5) if batchnorm else x.double()
            stride = block.skip.stride[0]
            expected = h.mean(1, keepdim=True)[:, :, ::stride, ::stride].expand_as(out)
            # float32 BN (a few ulps) then a sum of C_in rounded terms: error < C_in ulps of max |h|
            atol = (block.conv.in_channels + 8) * FLOAT32_EPS * float(h.abs().max())
            assert_close(f"widening block {index}", out, expected, atol)
            assert_channels_identical(f"widening block {index}", out)
        x = torch.randn(out.shape, generator=generator)


def train_steps(model, generator, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 3, 8, 8, generator=generator)
    target = torch.randint(0, 10, (8,), generator=generator)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
    return x


def test_constnet_deterministic_training_keeps_channels_identical(generator):
    """Native CPU arithmetic treats every channel alike, so SGD alone never breaks the symmetry."""
    model = ConstNet(depth=7, widen=1)
    x = train_steps(model, generator)
    assert model.blocks[0].conv.weight.abs().max() > 0, "the block convs never moved"
    seen, _ = record_activations(model)
    model(x)
    for name, out in seen:
        if out.dim() == 4:
            assert_channels_identical(name, out)


@pytest.mark.parametrize("option", ["dropout", "stem_dropout"])
def test_constnet_dropout_breaks_symmetry(option, generator):
    """Dropout masks channels differently, so gradients (and then features) stop being identical.

    Block dropout acts on zero conv outputs at init, so it needs a step or two of gradients; a
    widening skip averages channels again, so the first stage is where the difference shows.
    """
    torch.manual_seed(1)
    model = ConstNet(depth=7, widen=1, **{option: 0.2})
    x = train_steps(model, generator)
    model.eval()
    out = model.blocks[0](model.stem(x))
    assert (out != out[:, :1]).any(), f"{option}=0.2 left every channel of stage 1 identical after training"


def test_constnet_he_init():
    torch.manual_seed(2)
    model = ConstNet(depth=7, widen=4, init="he")
    for block in model.blocks:
        weight = block.conv.weight.detach()
        expected = math.sqrt(2 / (9 * weight.shape[0]))
        # sample std of >= 2304 normal draws: within 10% with overwhelming probability
        assert abs(float(weight.std()) / expected - 1) < 0.1, (weight.shape, float(weight.std()), expected)
    assert torch.equal(model.fc.weight, torch.zeros_like(model.fc.weight))
    assert torch.all(model.stem.weight[:, :, 1, 1] == 1 / 3)
    out = model.blocks(model.stem(torch.randn(2, 3, 8, 8)))
    assert (out != out[:, :1]).any()


# ---------------------------------------------------------------- LeakyNet

@torch.no_grad()
def leaky_features(model, x):
    return model.blocks(model.stem(x))


@pytest.mark.parametrize("init", ["iiiiiii", "i_ii_ii_ii", "1iiiiii", "1_ii_11_ii", "1111111", "i1iiiii"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_leakynet_is_linear_at_init(init, batchnorm, generator):
    model = LeakyNet(**SMALL, init=init, batchnorm=batchnorm).double().eval()
    x, y = (torch.randn(3, 3, 16, 16, generator=generator, dtype=torch.float64) for _ in range(2))
    a, b = 0.7, -1.3
    combined = leaky_features(model, a * x + b * y)
    expected = a * leaky_features(model, x) + b * leaky_features(model, y)
    # float64 with weights up to 100: each of 7 layers adds a few ulps of values ~ |x| * 100
    assert_close(f"linearity of {init}", combined, expected, atol=1e-11 * float(expected.abs().max() + 1))


def test_leakynet_odd_averaging_after_distinct_channels_is_not_linear(generator):
    """Averaging commutes with the activation only on identical channels; documented limit."""
    model = LeakyNet(**SMALL, init="ii1iiii", batchnorm=False).double()
    x, y = (torch.randn(3, 3, 16, 16, generator=generator, dtype=torch.float64) for _ in range(2))
    gap = leaky_features(model, x - y) - (leaky_features(model, x) - leaky_features(model, y))
    assert gap.abs().max() > 1e-3


@torch.no_grad()
def test_leakynet_all_identity_preserves_the_signal(generator):
    model = LeakyNet(**SMALL, init="iiiiiii", batchnorm=False)
    x = torch.randn(4, 3, 16, 16, generator=generator)
    stem = model.stem(x)
    assert torch.equal(stem, x[:, torch.arange(16) % 3]), "stem 'i' must replicate channel d mod 3"
    # one pair: LReLU(-(1/a) LReLU(h)) = -h; two float32 multiplies by a and 1/a: 2 ulps
    pair = model.blocks[1](model.blocks[0](stem))
    assert_close("first pair", pair, -stem, atol=2 * FLOAT32_EPS * float(stem.abs().max()))
    assert abs(float(pair.norm() / stem.norm()) - 1) < 1e-6
    out = leaky_features(model, x)
    # three pairs, two of them stride 2 and widening (32 <- 16, 64 <- 32): -S(stem) with
    # pixels subsampled by 4 and channel d <- d mod 16
    selected = stem[:, torch.arange(64) % 16, ::4, ::4]
    assert_close("all-i network", out, -selected, atol=6 * FLOAT32_EPS * float(stem.abs().max()))


def test_leakynet_odd_layers_are_negated_and_divided_by_slope():
    model = LeakyNet(**SMALL, init="1_i1_ii_ii", slope=0.05, batchnorm=False)
    centre = [block.conv.weight[:, :, 1, 1] for block in model.blocks]
    assert torch.all(model.stem.weight[:, :, 1, 1] == 1 / 3)
    assert torch.equal(centre[0], torch.eye(16))
    assert torch.allclose(centre[1], torch.full((16, 16), -1 / (16 * 0.05)))
    widening = torch.zeros(32, 16)
    widening[torch.arange(32), torch.arange(32) % 16] = 1
    assert torch.equal(centre[2], widening)
    assert torch.equal(centre[3], -torch.eye(32) / 0.05)
    for block in model.blocks:
        weight = block.conv.weight.clone()
        weight[:, :, 1, 1] = 0
        assert torch.equal(weight, torch.zeros_like(weight)), "only the centre tap may be non-zero"


def test_leakynet_averaging_layer_makes_channels_identical(generator):
    model = LeakyNet(**SMALL, init="i_1i_ii_ii")
    seen, _ = record_activations(model)
    logits = model(torch.randn(4, 3, 16, 16, generator=generator))
    assert torch.equal(logits, torch.zeros_like(logits))
    outputs = dict(seen)
    assert (outputs["stem"] != outputs["stem"][:, :1]).any(), "an 'i' stem must keep channels distinct"
    after = [name for name, out in seen if name.startswith("blocks.") and out.dim() == 4]
    assert after
    for name in after:
        assert_channels_identical(name, outputs[name])


def test_leakynet_h_letters_and_batchnorm_placement():
    torch.manual_seed(3)
    model = LeakyNet(depth=7, widen=4, init="hhhh", slope=0.01)
    assert [isinstance(b.norm, nn.BatchNorm2d) for b in model.blocks] == [False, True, False]
    for block in model.blocks:
        weight = block.conv.weight.detach()
        expected = math.sqrt(2 / (1 + 0.01**2)) / math.sqrt(9 * weight.shape[0])
        assert abs(float(weight.std()) / expected - 1) < 0.1
    assert not any(isinstance(b.norm, nn.BatchNorm2d) for b in LeakyNet(**SMALL, batchnorm=False).blocks)


def test_leakynet_default_init_matches_depth():
    assert LeakyNet(**SMALL).letters == "1" + "i" * 6
    assert LeakyNet(widen=1).letters == "1" + "i" * 12


# ---------------------------------------------------------------- WideResNet

def test_wideresnet_small_forward_and_init(generator):
    torch.manual_seed(4)
    model = WideResNet(depth=10, widen=2, in_channels=1, num_classes=5)
    assert count(model) == wideresnet_parameters(10, 2, 1, 5)
    assert model(torch.randn(2, 1, 8, 8, generator=generator)).shape == (2, 5)
    weight = model.blocks[-1].conv2.weight.detach()
    assert abs(float(weight.std()) / math.sqrt(2 / (9 * weight.shape[0])) - 1) < 0.1
    assert torch.equal(model.fc.bias, torch.zeros_like(model.fc.bias))


# ---------------------------------------------------------------- ReplicaMLP

def test_replica_mlp_rows_identical_without_noise(generator):
    torch.manual_seed(5)
    model = ReplicaMLP(in_features=64, width=48, replicas=6, noise=0.0, num_classes=10)
    rows = model.hidden.weight.view(8, 6, 64)
    assert torch.equal(rows, rows[:, :1].expand_as(rows)), "every group of 6 rows must be bitwise identical"
    unique = rows[:, 0]
    assert (unique[:, None] != unique[None]).any(-1).sum() == 8 * 7, "unique features must differ"
    hidden = model.relu(model.hidden(torch.randn(5, 64, generator=generator))).view(5, 8, 6)
    assert torch.equal(hidden, hidden[:, :, :1].expand_as(hidden))
    assert model(torch.randn(5, 1, 8, 8, generator=generator)).shape == (5, 10)


def test_replica_mlp_noise_separates_replicas():
    torch.manual_seed(6)
    model = ReplicaMLP(in_features=784, width=400, replicas=4, noise=0.1)
    rows = model.hidden.weight.detach().view(100, 4, 784)
    spread = rows - rows.mean(1, keepdim=True)
    assert (rows[:, :, None] != rows[:, None]).any(-1).sum() == 100 * 4 * 3, "replicas must all differ"
    # deviation from the group mean of 4 has std noise * he_std * sqrt(3/4); 313600 samples
    expected = 0.1 * math.sqrt(2 / 784) * math.sqrt(3 / 4)
    assert abs(float(spread.std()) / expected - 1) < 0.02


def test_replica_mlp_he_scales():
    torch.manual_seed(7)
    model = ReplicaMLP(in_features=512, width=1000, replicas=1)
    assert abs(float(model.hidden.weight.detach().std()) / math.sqrt(2 / 512) - 1) < 0.02
    assert abs(float(model.fc.weight.detach().std()) / math.sqrt(2 / 1000) - 1) < 0.05
    assert not model.hidden.bias.any() and not model.fc.bias.any()


# ---------------------------------------------------------------- build, layer order, validation

def test_build_by_name():
    assert isinstance(build("constnet", **SMALL), ConstNet)
    assert isinstance(build("LeakyNet", **SMALL, init="1_ii_11_ii"), LeakyNet)
    assert isinstance(build("wrn", depth=10, widen=1), WideResNet)
    assert isinstance(build("mlp", in_features=64, width=8, replicas=2), ReplicaMLP)
    paper = build("mlp")  # the paper's 784-256-10
    assert (paper.hidden.in_features, paper.hidden.out_features, paper.fc.out_features) == (784, 256, 10)
    assert {"constnet", "leakynet", "wrn", "mlp"} <= set(nets.NETWORKS)


@pytest.mark.parametrize("name, options, match", [
    ("resnet", {}, "unknown network 'resnet'; choose one of 'constnet', 'leakynet', 'wrn', 'mlp'"),
    ("constnet", {"width": 3}, "unknown option.*'width'.*allowed: depth, widen"),
    (3, {}, "network name must be a str"),
])
def test_build_rejects_bad_names_and_options(name, options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build(name, **options)


@pytest.mark.parametrize("name, options", [
    ("constnet", SMALL), ("leakynet", SMALL), ("wrn", dict(depth=10, widen=1)),
    ("mlp", dict(in_features=192, width=8, replicas=2)),
])
def test_reduction_layers_follow_forward_order(name, options, generator):
    model = build(name, **options)
    listed = [module for _, module in reducing_layers(model)]
    called = []
    for module in listed:
        module.register_forward_hook(lambda m, i, o: called.append(m))
    model(torch.randn(2, 3, 8, 8, generator=generator))
    assert [id(m) for m in called] == [id(m) for m in listed]
    assert reducing_layers(model)[-1][0] == "fc"


CONSTRUCTOR_ERRORS = [
    (ConstNet, dict(depth=15), ValueError, r"depth=15 .* depth = 3\*n \+ 4 .*e\.g\. 7, 10, 16, 28"),
    (ConstNet, dict(depth=4), ValueError, "depth=4"),
    (ConstNet, dict(depth=16.0), TypeError, "depth must be an int"),
    (ConstNet, dict(widen=0), ValueError, "widen=0"),
    (ConstNet, dict(in_channels=0), ValueError, "in_channels=0"),
    (ConstNet, dict(num_classes=True), TypeError, "num_classes must be an int"),
    (ConstNet, dict(batchnorm=1), TypeError, "batchnorm must be True or False"),
    (ConstNet, dict(dropout=1.0), ValueError, r"dropout=1.0 .* \[0.0, 1.0\)"),
    (ConstNet, dict(stem_dropout=-0.1), ValueError, "stem_dropout=-0.1"),
    (ConstNet, dict(dropout=float("nan")), ValueError, "dropout=nan"),
    (ConstNet, dict(init="xavier"), ValueError, "init='xavier' .* 'zero', 'he'"),
    (LeakyNet, dict(init="1_iiii"), ValueError,
     r"has 5 letters but depth=16 has 13 convs \(stem \+ 12 blocks\).*e\.g\. '1_iiii_iiii_iiii'"),
    (LeakyNet, dict(depth=10, init="1_ii_x1_ii"), ValueError, r"unknown letter\(s\) 'x'"),
    (LeakyNet, dict(init=7), TypeError, "init must be a str"),
    (LeakyNet, dict(slope=0.0), ValueError, r"slope=0 .* \(0, 1\]"),
    (LeakyNet, dict(slope=1.5), ValueError, "slope=1.5"),
    (LeakyNet, dict(depth=12), ValueError, "LeakyNet needs depth"),
    (LeakyNet, dict(batchnorm="no"), TypeError, "batchnorm"),
    (WideResNet, dict(depth=16 + 3), ValueError, r"WideResNet needs depth = 6\*n \+ 4"),
    (WideResNet, dict(dropout=2), ValueError, "dropout=2"),
    (ReplicaMLP, dict(in_features=10, width=10, replicas=3), ValueError, "width=10 is not a multiple of replicas=3"),
    (ReplicaMLP, dict(in_features=10, width=10, replicas=0), ValueError, "replicas=0"),
    (ReplicaMLP, dict(in_features=0, width=10), ValueError, "in_features=0"),
    (ReplicaMLP, dict(in_features=10, width=10, noise=-1.0), ValueError, "noise=-1.0"),
]


@pytest.mark.parametrize("cls, options, error, match", CONSTRUCTOR_ERRORS)
def test_every_option_is_validated(cls, options, error, match):
    with pytest.raises(error, match=match):
        cls(**options)


# ---------------------------------------------------------------- training through kernels.patch

def small_models():
    return [
        ConstNet(depth=7, widen=1, in_channels=1, dropout=0.1),
        LeakyNet(depth=7, widen=1, in_channels=1, init="1iii"),
        WideResNet(depth=10, widen=1, in_channels=1),
        ReplicaMLP(in_features=64, width=32, replicas=4),
    ]


def kernels_with_patch():
    kernels = pytest.importorskip("kernels")
    if not hasattr(kernels, "patch"):
        pytest.skip("kernels.patch is not exported yet")
    return kernels


@pytest.mark.parametrize("index", range(4), ids=["constnet", "leakynet", "wrn", "mlp"])
def test_networks_train_through_kernels_patch(index, generator):
    kernels = kernels_with_patch()
    torch.manual_seed(8)
    model = small_models()[index]
    patched = kernels.patch(model, kernels.Reduction(mode="fixed"), backend="emulate")
    assert patched.count == len(reducing_layers(model))
    x = torch.randn(16, 1, 8, 8, generator=generator)
    target = torch.randint(0, 10, (16,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        torch.manual_seed(9)  # same dropout masks every step
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"loss did not fall through kernels.patch: {losses}"


@pytest.mark.parametrize("mode, splits", [("fixed", 1), ("splitk", 4)])
def test_constnet_symmetry_breaks_only_with_a_varying_reduction_order(mode, splits, generator):
    """The paper's claim in miniature: a fixed order keeps 0-init ConstNet symmetric, per-element
    split-K orders (one-ulp differences between channels) break it."""
    kernels = kernels_with_patch()
    torch.manual_seed(0)
    model = ConstNet(depth=7, widen=1)
    kernels.patch(model, kernels.Reduction(mode=mode, splits=splits, seed=3), backend="emulate")
    x = train_steps(model, generator, steps=2)
    model.eval()
    out = model.blocks[0](model.stem(x))
    distinct = bool((out != out[:, :1]).any())
    assert distinct == (mode == "splitk"), f"{mode}: channels of stage 1 distinct = {distinct}"
