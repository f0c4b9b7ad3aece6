"""The Triton implicit-GEMM conv: under the interpreter on CPU (tiny shapes), compiled on a GPU
(`gpu`), and its launch configs (tests/test_aot_compile.py compiles them for sm_80 / sm_90).

Each test body runs on both backends ("interpret" on CPU tensors, "triton" on CUDA tensors).
References: torch's float64 conv within the per-role bound of test_conv, and the emulate
backend bit for bit where every chunk partial is exact (integer-valued tensors), so that the
only rounding left is the ordered addition of chunks, which the two backends share.
"""
from __future__ import annotations

import copy

import pytest
import torch
import triton

from kernels.backends import interpreter_enabled
from kernels.calls import CallCounter, counting
from kernels.reduction import Policy, Reduction
from test_conv import CONFIG_IDS, CONFIGS, ROLES, assert_roles_within_bound, draw_problem, integer_problem, run_roles
from test_conv_symmetry import channel_report

BACKENDS = [
    pytest.param(
        "interpret",
        marks=[pytest.mark.interpreter,
               pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 (no GPU)")],
    ),
    pytest.param("triton", marks=pytest.mark.gpu),
]
DEVICE = {"interpret": "cpu", "triton": "cuda"}
# Tiny problems for the interpreter (about 1000x slower than torch): 3x3 stride 2 at odd sizes,
# 1x1 with padding 1, 5x5 stride 2, and batch 1 without padding.
TINY = [CONFIGS[1], CONFIGS[5], CONFIGS[6], CONFIGS[2]]
TINY_IDS = [CONFIG_IDS[1], CONFIG_IDS[5], CONFIG_IDS[6], CONFIG_IDS[2]]


def on(backend, tensors):
    return [t.to(DEVICE[backend]) if isinstance(t, torch.Tensor) else t for t in tensors]


def roles_from_call(backend, x, w, gy, stride, padding, reduction, call=0, bias=None):
    with counting(CallCounter(call)):
        return run_roles(x, w, bias, gy, stride, padding, Policy.uniform(reduction), backend=backend)


def assert_bitwise(got, expected, what):
    for role in ROLES:
        a, b = got[role].cpu(), expected[role].cpu()
        differ = a != b
        if differ.any():
            first = tuple(int(i) for i in differ.nonzero()[0])
            raise AssertionError(
                f"{what} {role}: {int(differ.sum())}/{differ.numel()} elements differ; first at {first}: "
                f"{a[first].item()!r} vs {b[first].item()!r}"
            )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "reduction",
    [Reduction(), Reduction("splitk", splits=3, seed=5), Reduction("atomic", splits=2)],
    ids=lambda r: r.describe(),
)
@pytest.mark.parametrize("config", TINY, ids=TINY_IDS)
def test_every_role_matches_float64(generator, backend, config, reduction):
    x, w, bias, gy, stride, padding = on(backend, draw_problem(generator, config))
    policy = Policy.uniform(reduction)
    got = run_roles(x, w, bias, gy, stride, padding, policy, backend=backend)
    assert_roles_within_bound(got, x, w, bias, gy, stride, padding, policy)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
def test_operand_precisions_within_their_bound(generator, backend, precision):
    x, w, bias, gy, stride, padding = on(backend, draw_problem(generator, TINY[0]))
    policy = Policy.uniform(Reduction("splitk", splits=2, precision=precision, accumulate="fp16"))
    got = run_roles(x, w, bias, gy, stride, padding, policy, backend=backend)
    assert_roles_within_bound(got, x, w, bias, gy, stride, padding, policy)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tensors(generator, backend, dtype):
    x, w, bias, gy, stride, padding = on(backend, draw_problem(generator, TINY[0], dtype=dtype))
    policy = Policy.uniform(Reduction(precision={torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]))
    got = run_roles(x, w, bias, gy, stride, padding, policy, backend=backend)
    assert all(got[role].dtype == dtype for role in ROLES)
    assert_roles_within_bound(got, x, w, bias, gy, stride, padding, policy)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("granularity", ["call", "tile", "element"])
def test_splitk_order_is_emulates_order_bit_for_bit(generator, backend, granularity):
    """Integer tensors: exact chunk partials, bf16 additions between chunks that round by order."""
    x, w, gy, stride, padding = integer_problem(generator, TINY[0])
    reduction = Reduction("splitk", splits=4, seed=9, granularity=granularity, accumulate="bf16")
    emulated = roles_from_call("emulate", x, w, gy, stride, padding, reduction)
    got = roles_from_call(backend, *on(backend, (x, w, gy)), stride, padding, reduction)
    assert_bitwise(got, emulated, f"{backend} vs emulate, {reduction.describe()}")
    later = roles_from_call("emulate", x, w, gy, stride, padding, reduction, call=3)
    assert any(not torch.equal(later[r], emulated[r]) for r in ROLES), "the order had no effect: vacuous check"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", [Reduction("fixed", splits=3, accumulate="fp16"), Reduction("atomic", splits=3)],
                         ids=lambda r: r.describe())
def test_fixed_and_atomic_are_exact_on_exact_sums(generator, backend, reduction):
    """Small integers: every sum is exact in fp16, so both modes must give the float64 result bit for bit."""
    x, w, gy, stride, padding = (t if not isinstance(t, torch.Tensor) else t.clamp(-3, 3) for t in
                                 integer_problem(generator, TINY[1]))
    exact = roles_from_call("emulate", x.double(), w.double(), gy.double(), stride, padding,
                            Reduction(precision="fp64", accumulate="fp64"))
    got = roles_from_call(backend, *on(backend, (x, w, gy)), stride, padding, reduction)
    assert_bitwise(got, {role: exact[role].float() for role in ROLES}, f"{backend} {reduction.describe()}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_tensors_give_the_same_bits(generator, backend):
    """Channels-last and sliced tensors are read through their strides, with the same arithmetic."""
    x, w, bias, gy, stride, padding = on(backend, draw_problem(generator, TINY[0]))
    reduction = Reduction("splitk", splits=2)
    dense = roles_from_call(backend, x, w, gy, stride, padding, reduction)
    wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], device=x.device)
    wide[..., ::2] = x
    strided = roles_from_call(backend, wide[..., ::2], w.to(memory_format=torch.channels_last),
                              gy.to(memory_format=torch.channels_last), stride, padding, reduction)
    assert_bitwise(strided, dense, f"{backend} strided tensors")


@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_symmetry(generator, backend):
    """Identical channels and filters: fixed keeps every role's channels bitwise identical, a
    per-element splitk order breaks them (K = 72, bf16 additions between 5 chunks that cut
    through channels, so partials differ and their order shows)."""
    x = torch.randn(2, 1, 6, 6, generator=generator).expand(-1, 8, -1, -1).contiguous()
    w = torch.randn(1, 1, 3, 3, generator=generator).expand(8, 8, -1, -1).contiguous()
    gy = torch.randn(2, 1, 6, 6, generator=generator).expand(-1, 8, -1, -1).contiguous()
    x, w, gy = on(backend, (x, w, gy))
    fixed = channel_report(roles_from_call(backend, x, w, gy, 1, 1, Reduction("fixed", splits=5, accumulate="bf16")))
    assert all(count == 0 for count in fixed.values()), f"fixed: differing slices {fixed}"
    noisy = channel_report(roles_from_call(backend, x, w, gy, 1, 1, Reduction("splitk", splits=5, accumulate="bf16")))
    assert all(count > 0 for count in noisy.values()), f"splitk element: slices should differ in every role {noisy}"


@pytest.mark.gpu
def test_fixed_mode_is_bitwise_repeatable_on_the_gpu(generator):
    x, w, bias, gy, stride, padding = on("triton", draw_problem(generator, (8, 64, 96, 17, 17, 3, 2, 1, True)))
    for reduction in (Reduction(), Reduction("fixed", splits=8, precision="tf32")):
        first = roles_from_call("triton", x, w, gy, stride, padding, reduction, bias=bias)
        for _ in range(3):
            assert_bitwise(roles_from_call("triton", x, w, gy, stride, padding, reduction, bias=bias), first, "repeat")


@pytest.mark.gpu
def test_patched_model_runs_on_the_gpu(generator):
    from torch import nn

    from kernels.patch import patch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                          nn.Flatten(), nn.Linear(32 * 8 * 8, 10)).cuda()
    x = torch.randn(4, 3, 16, 16, generator=generator).cuda()
    expected = copy.deepcopy(model).double()(x.double())  # not cuDNN in fp32: it may use TF32
    assert patch(model, Policy(weight_grad=Reduction("splitk", splits=8)), example_input=x).count == 3  # caps K=4
    got = model(x)
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
    got.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------- launch configs


def test_config_depends_on_format_and_grid_only():
    from kernels.aot_variants import CONV_GEOMETRIES
    from kernels.conv_triton import BLOCK_K, TILES, conv_config
    from kernels.triton_launch import TARGET_PROGRAMS

    problem = CONV_GEOMETRIES["3x3 s1"]
    for role in ROLES:
        m, n, _, _ = problem.gemm(role)
        for precision, splits in (("fp16", 1), ("fp32", 1), ("bf16", 8), ("tf32", 3)):
            config = conv_config(precision, [torch.float16 if precision == "fp16" else torch.float32], m, n, splits)
            programs = -(-m // config.block_m) * -(-n // config.block_n) * splits
            assert config.block_k == BLOCK_K
            assert config.block_m * config.block_n <= (128 * 128 if precision != "fp32" else 64 * 64), (role, config)
            if precision == "bf16":  # fp32 operands converted in registers: never the largest tile
                assert (config.block_m, config.block_n) != (128, 128)
            fitting = [t for t in TILES[precision] if t[0] <= max(triton.next_power_of_2(m), TILES[precision][-1][0])]
            assert programs >= TARGET_PROGRAMS or (config.block_m, config.block_n) == fitting[-1][:2], (role, config)
    # no tile taller than the problem: a 3-channel input gradient (M = 3) on a wide grid
    assert conv_config("fp16", [torch.float16], 3, 128 * 32 * 32, 1).block_m == 64
    assert conv_config("fp32", [torch.float32], 3, 128 * 32 * 32, 1).block_m == 32
    assert conv_config("fp16", [torch.float16], 160, 128 * 32 * 32, 1).block_m == 128
    # a ConstNet stage-1 weight gradient in one chunk fills an H100/H200 (it had 69 programs on 64x64 tiles)
    config = conv_config("fp32", [torch.float32], 160, 1440, 1)
    assert -(-160 // config.block_m) * -(-1440 // config.block_n) >= TARGET_PROGRAMS
