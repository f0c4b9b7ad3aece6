"""kernels.conv2d on the emulate backend: accuracy per role, the GEMM specification, order semantics, errors."""
import pytest
import torch
import torch.nn.functional as F

from kernels.calls import CallCounter, counting
from kernels.conv import conv2d
from kernels.gemm_emulate import gemm as emulated_gemm
from kernels.order import call_key, chunk_bounds
from kernels.reduction import Policy, Reduction

ROLES = ("forward", "input_grad", "weight_grad")
UNIT_ROUNDOFF = {"fp64": 2.0**-53, "fp32": 2.0**-24, "tf32": 2.0**-11, "fp16": 2.0**-11, "bf16": 2.0**-8}
DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}

# (batch, c_in, c_out, height, width, kernel, stride, padding, bias): channels are never
# multiples of 16, spatial sizes are odd where the stride is 2.
CONFIGS = [
    (2, 5, 7, 9, 9, 3, 1, 1, True),  # 3x3 "same"
    (3, 6, 5, 9, 7, 3, 2, 1, False),  # 3x3 stride 2, odd sizes
    (1, 19, 11, 8, 8, 3, 1, 0, True),  # batch 1, no padding
    (2, 7, 17, 7, 9, 1, 1, 0, False),  # 1x1
    (2, 9, 6, 9, 9, 1, 2, 0, True),  # 1x1 stride 2 (a widening shortcut), odd size
    (2, 5, 6, 7, 7, 1, 2, 1, False),  # 1x1 with padding 1: taps in the padding only
    (2, 4, 5, 11, 9, 5, 2, 1, False),  # 5x5 stride 2
]
CONFIG_IDS = [f"n{c[0]}-{c[1]}to{c[2]}-{c[3]}x{c[4]}-k{c[5]}s{c[6]}p{c[7]}{'-bias' if c[8] else ''}" for c in CONFIGS]


def draw(generator, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=generator).to(dtype)


def output_size(h, w, k, stride, padding):
    return (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1


def reduction_lengths(batch, c_in, c_out, k, out_hw):
    """K of each role, as kernels.conv specifies."""
    return {"forward": c_in * k * k, "input_grad": c_out * k * k, "weight_grad": batch * out_hw[0] * out_hw[1]}


def exact_roles(x, w, gy, stride, padding):
    """The three roles in float64 from torch's conv and its autograd."""
    x = x.double().requires_grad_()
    w = w.double().requires_grad_()
    y = F.conv2d(x, w, stride=stride, padding=padding)
    gx, gw = torch.autograd.grad(y, (x, w), gy.double())
    return {"forward": y.detach(), "input_grad": gx, "weight_grad": gw}


def run_roles(x, w, bias, gy, stride, padding, policy, backend="emulate"):
    """conv2d's forward (bias included) and both gradients, under `policy`."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = conv2d(x, w, bias, stride, padding, policy=policy, backend=backend)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    return {"forward": y.detach(), "input_grad": gx, "weight_grad": gw}


def role_bound(magnitude, reduction: Reduction, length: int, out_dtype) -> torch.Tensor:
    """First-order worst-case error bound of one role's GEMM, per element.

    `magnitude` is |A| @ |B| (the same role computed on absolute values). Rounding both
    operands costs 2u_op per product; a chunk of length L summed in fp32 (or fp64) costs
    L*u_inner; rounding each chunk partial to the accumulate format and the splits-1 additions
    between chunks cost splits*u_acc; the cast to the output dtype costs u_out. The bound thus
    grows with the reduction length of the role (Higham's recursive-summation analysis).
    """
    longest_chunk = max(hi - lo for lo, hi in chunk_bounds(length, reduction.splits))
    u_inner = UNIT_ROUNDOFF["fp64" if reduction.precision == "fp64" else "fp32"]
    gamma = (
        2 * UNIT_ROUNDOFF[reduction.precision]
        + longest_chunk * u_inner
        + reduction.splits * UNIT_ROUNDOFF[reduction.accumulate]
        + UNIT_ROUNDOFF[DTYPE_NAME[out_dtype]]
    )
    return 1.01 * gamma * magnitude + 1e-30


def assert_roles_within_bound(got, x, w, bias, gy, stride, padding, policy):
    """Every role of `got` within role_bound of the float64 result (plus the bias rounding)."""
    exact = exact_roles(x, w, gy, stride, padding)
    magnitude = exact_roles(x.abs(), w.abs(), gy.abs(), stride, padding)
    if bias is not None:
        exact["forward"] = exact["forward"] + bias.double().view(1, -1, 1, 1)
    lengths = reduction_lengths(x.shape[0], x.shape[1], w.shape[0], w.shape[2], exact["forward"].shape[2:])
    for role in ROLES:
        reduction = getattr(policy, role)
        bound = role_bound(magnitude[role], reduction, lengths[role], got[role].dtype)
        if role == "forward" and bias is not None:  # one more rounding: the bias add
            bias_magnitude = bias.double().abs().view(1, -1, 1, 1)
            bound = bound + UNIT_ROUNDOFF[DTYPE_NAME[got[role].dtype]] * (magnitude[role] + bias_magnitude)
        shape, expected_shape = tuple(got[role].shape), tuple(exact[role].shape)
        assert shape == expected_shape, f"{role}: shape {shape}, expected {expected_shape}"
        assert torch.isfinite(got[role]).all(), f"{role}: {int((~torch.isfinite(got[role])).sum())} non-finite values"
        err = (got[role].double() - exact[role]).abs()
        bad = err > bound
        if bad.any():
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise AssertionError(
                f"{role} ({reduction.describe()}, K={lengths[role]}): {int(bad.sum())}/{err.numel()} elements exceed "
                f"the bound; first at {first}: error {err[first].item():.3e} > bound {bound[first].item():.3e}"
            )


def draw_problem(generator, config, dtype=torch.float32):
    batch, c_in, c_out, h, w, k, stride, padding, with_bias = config
    x = draw(generator, batch, c_in, h, w, dtype=dtype)
    weight = draw(generator, c_out, c_in, k, k, dtype=dtype)
    bias = draw(generator, c_out, dtype=dtype) if with_bias else None
    gy = draw(generator, batch, c_out, *output_size(h, w, k, stride, padding), dtype=dtype)
    return x, weight, bias, gy, stride, padding


MODES = [
    Reduction(),
    Reduction("fixed", splits=3),
    Reduction("splitk", splits=4, seed=1),
    Reduction("splitk", splits=3, granularity="tile"),
    Reduction("splitk", splits=2, granularity="call"),
    Reduction("atomic", splits=3),
]


@pytest.mark.parametrize("reduction", MODES, ids=lambda r: r.describe())
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_every_role_matches_float64(generator, config, reduction):
    x, w, bias, gy, stride, padding = draw_problem(generator, config)
    policy = Policy.uniform(reduction)
    got = run_roles(x, w, bias, gy, stride, padding, policy)
    assert_roles_within_bound(got, x, w, bias, gy, stride, padding, policy)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("accumulate", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("config", CONFIGS[:2], ids=CONFIG_IDS[:2])
def test_every_precision_within_its_bound(generator, config, precision, accumulate):
    x, w, bias, gy, stride, padding = draw_problem(generator, config)
    policy = Policy.uniform(Reduction("splitk", splits=4, precision=precision, accumulate=accumulate))
    got = run_roles(x, w, bias, gy, stride, padding, policy)
    assert_roles_within_bound(got, x, w, bias, gy, stride, padding, policy)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tensors_keep_their_dtype(generator, dtype):
    x, w, bias, gy, stride, padding = draw_problem(generator, CONFIGS[1], dtype=dtype)
    policy = Policy.uniform(Reduction(precision=DTYPE_NAME[dtype]))
    got = run_roles(x, w, bias, gy, stride, padding, policy)
    assert all(got[role].dtype == dtype for role in ROLES), {role: got[role].dtype for role in ROLES}
    assert_roles_within_bound(got, x, w, bias, gy, stride, padding, policy)


def test_mixed_input_dtypes_promote_like_torch(generator):
    x = draw(generator, 1, 3, 5, 5, dtype=torch.float16)
    w = draw(generator, 4, 3, 3, 3)
    assert conv2d(x, w, padding=1).dtype == torch.float32


def test_lower_precision_is_measurably_less_accurate(generator):
    x, w, _, _, stride, padding = draw_problem(generator, (2, 32, 8, 12, 12, 3, 1, 1, False))
    exact = F.conv2d(x.double(), w.double(), stride=stride, padding=padding)
    errors = {
        p: (conv2d(x, w, None, stride, padding, policy=Reduction(precision=p)).double() - exact).abs().max().item()
        for p in ("fp32", "tf32", "fp16", "bf16")
    }
    assert errors["fp32"] < errors["tf32"] and errors["fp16"] < errors["bf16"], errors


# ------------------------------------------------------------------ the GEMM specification


def spec_operands(role, x, w, gy, stride, padding):
    """(A, B) of a role built independently of kernels.conv_emulate (F.unfold and plain loops)."""
    batch, c_in, h, width = x.shape
    c_out, _, kh, kw = w.shape
    ho, wo = gy.shape[2:]
    if role == "forward":  # K = (ci, ky, kx), n = (b, oy, ox)
        cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (N, K, L)
        return w.reshape(c_out, -1), cols.transpose(0, 1).reshape(c_in * kh * kw, -1)
    if role == "weight_grad":  # K = (b, oy, ox), n = (ci, ky, kx)
        cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)
        return gy.transpose(0, 1).reshape(c_out, -1), cols.transpose(1, 2).reshape(-1, c_in * kh * kw)
    # input_grad: K = (co, ky, kx), n = (b, y, x); taps landing on no output position stay 0
    taps = torch.zeros(c_out, kh, kw, batch, h, width)
    for ky in range(kh):
        for kx in range(kw):
            for oy in range(ho):
                for ox in range(wo):
                    iy, ix = oy * stride - padding + ky, ox * stride - padding + kx
                    if 0 <= iy < h and 0 <= ix < width:
                        taps[:, ky, kx, :, iy, ix] = gy[:, :, oy, ox].t()
    return w.transpose(0, 1).reshape(c_in, -1), taps.reshape(c_out * kh * kw, -1)


def spec_result(role, c, x, w, gy):
    """A role's (M, N) GEMM result laid out as the tensor conv2d returns."""
    if role == "weight_grad":
        return c.view(w.shape)
    batch = x.shape[0]
    size = gy.shape[2:] if role == "forward" else x.shape[2:]
    return c.view(c.shape[0], batch, *size).transpose(0, 1)


def integer_problem(generator, config):
    """Integer-valued tensors: every product and every chunk sum is exact in fp32, so the only
    roundings are the bf16 partials and the additions between chunks, whose order is under test."""
    x, w, _, gy, stride, padding = draw_problem(generator, config)
    return [torch.round(t * 6) for t in (x, w, gy)] + [stride, padding]


SPEC_REDUCTION = Reduction("splitk", splits=4, seed=21, granularity="element", accumulate="bf16")


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_roles_are_the_specified_gemms_bit_for_bit(generator, config):
    """Each role equals the emulated GEMM of its specified (A, B), with the call numbers
    forward 0, input_grad 1, weight_grad 2: orientation, K order and call order all as documented."""
    x, w, gy, stride, padding = integer_problem(generator, config)
    with counting():
        got = run_roles(x, w, None, gy, stride, padding, Policy.uniform(SPEC_REDUCTION))
    fixed = run_roles(x, w, None, gy, stride, padding, Policy.uniform(Reduction("fixed", splits=4, accumulate="bf16")))
    for call, role in enumerate(ROLES):
        a, b = spec_operands(role, x, w, gy, stride, padding)
        key = call_key(SPEC_REDUCTION.seed, call)
        expected = spec_result(role, emulated_gemm(a, b, SPEC_REDUCTION, key, torch.float32), x, w, gy)
        assert torch.equal(got[role], expected), f"{role}: {int((got[role] != expected).sum())} elements differ"
    assert any(not torch.equal(got[role], fixed[role]) for role in ROLES), "the seeded order must matter here"


def test_calls_are_numbered_forward_then_input_grad_then_weight_grad(generator):
    x, w, _, gy, stride, padding = draw_problem(generator, CONFIGS[0])
    noisy = Reduction("splitk", splits=4)
    with counting() as counter:
        run_roles(x, w, None, gy, stride, padding, Policy(weight_grad=noisy))
        assert counter.next_call == 1, "only the splitk weight gradient takes a call number"
        run_roles(x, w, None, gy, stride, padding, Policy.uniform(noisy))
        assert counter.next_call == 4
        conv2d(x, w, stride=stride, padding=padding, policy=noisy)
        assert counter.next_call == 5, "no gradient roles run for inputs that need no gradient"


# ------------------------------------------------------------------ reproducibility


def test_fixed_is_bitwise_repeatable(generator):
    x, w, bias, gy, stride, padding = draw_problem(generator, (4, 24, 20, 11, 11, 3, 2, 1, True))
    for reduction in (Reduction(), Reduction("fixed", splits=5, accumulate="fp16")):
        first = run_roles(x, w, bias, gy, stride, padding, Policy.uniform(reduction))
        for _ in range(2):
            again = run_roles(x, w, bias, gy, stride, padding, Policy.uniform(reduction))
            for role in ROLES:
                assert torch.equal(first[role], again[role]), f"{reduction.describe()} {role} changed between runs"


def test_splitk_replays_from_its_seed_and_changes_with_it(generator):
    x, w, bias, gy, stride, padding = draw_problem(generator, (4, 64, 32, 12, 12, 3, 1, 1, False))

    def run(seed, counter):
        with counting(counter):
            return run_roles(x, w, bias, gy, stride, padding, Policy.uniform(Reduction("splitk", splits=16, seed=seed)))

    first, replay, other_seed = run(3, CallCounter()), run(3, CallCounter()), run(4, CallCounter())
    second_step = run(3, CallCounter(start=3))
    for role in ROLES:
        assert torch.equal(first[role], replay[role]), f"{role}: same seed and counter must give the same bits"
        differing = int((first[role] != other_seed[role]).sum())
        assert 0 < differing < first[role].numel(), f"{role}: {differing} elements differ between seeds 3 and 4"
        assert not torch.equal(first[role], second_step[role]), f"{role}: the order must advance with the call number"


def test_channels_last_tensors_give_the_same_bits(generator):
    x, w, bias, gy, stride, padding = draw_problem(generator, (4, 24, 20, 11, 11, 3, 2, 1, True))
    policy = Policy.uniform(Reduction("fixed", splits=2))
    dense = run_roles(x, w, bias, gy, stride, padding, policy)
    strided = run_roles(*(t.to(memory_format=torch.channels_last) for t in (x, w)), bias,
                        gy.to(memory_format=torch.channels_last), stride, padding, policy)
    for role in ROLES:
        assert torch.equal(dense[role], strided[role]), role


def test_gradcheck_through_the_float64_reference_path(generator):
    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=generator, requires_grad=True)

    x, w3, w1, b = leaf(2, 3, 5, 4), leaf(3, 3, 3, 3), leaf(3, 3, 1, 1), leaf(3)
    for reduction in (
        Reduction(precision="fp64", accumulate="fp64"),
        Reduction("splitk", splits=3, precision="fp64", accumulate="fp64"),
    ):
        assert torch.autograd.gradcheck(lambda x, w, b: conv2d(x, w, b, 2, 1, policy=reduction), (x, w3, b))
        assert torch.autograd.gradcheck(lambda x, w: conv2d(x, w, None, 2, 0, policy=reduction), (x, w1))


def test_native_backend_is_torch_conv(generator):
    x, w, bias, gy, stride, padding = draw_problem(generator, CONFIGS[0])
    got = run_roles(x, w, bias, gy, stride, padding, Reduction("splitk"), backend="native")
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = F.conv2d(xr, wr, bias, stride, padding)
    gx, gw = torch.autograd.grad(y, (xr, wr), gy)
    assert torch.equal(got["forward"], y) and torch.equal(got["input_grad"], gx) and torch.equal(got["weight_grad"], gw)


def test_bias_gradient_is_the_sum_of_the_output_gradient(generator):
    x, w, bias, gy, stride, padding = draw_problem(generator, CONFIGS[0])
    bias = bias.clone().requires_grad_()
    conv2d(x, w, bias, stride, padding).backward(gy)
    assert torch.allclose(bias.grad.double(), gy.double().sum((0, 2, 3)), rtol=1e-6, atol=1e-5)


def test_empty_batch_gives_torch_shapes_and_zero_weight_gradient():
    x = torch.randn(0, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    y = conv2d(x, w, padding=1, policy=Reduction("splitk", splits=1))
    y.sum().backward()
    assert y.shape == (0, 4, 5, 5) and x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)), "an empty weight-gradient reduction is zero"


def test_pair_stride_and_padding(generator):
    x, w = draw(generator, 2, 3, 9, 8), draw(generator, 4, 3, 3, 1)
    exact = F.conv2d(x.double(), w.double(), stride=(2, 1), padding=(1, 0))
    got = conv2d(x, w, stride=(2, 1), padding=(1, 0))
    assert got.shape == exact.shape and torch.allclose(got.double(), exact, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ errors


def _x():
    return torch.randn(2, 3, 6, 6)


def _w():
    return torch.randn(4, 3, 3, 3)


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((torch.randn(3, 6, 6), _w()), {}, ValueError, r"x must be a 4-D \(N, C_in, H, W\)"),
        ((_x(), torch.randn(4, 3, 3)), {}, ValueError, "w must be a 4-D"),
        ((_x(), torch.randn(4, 5, 3, 3)), {}, ValueError, "channel mismatch: x has C_in=3 channels but w expects 5"),
        ((_x(), torch.randn(4, 3, 2, 2)), {}, ValueError, r"kernel size \(2, 2\).*must be odd"),
        ((_x().int(), _w()), {}, TypeError, "x has dtype int32"),
        ((_x(), _w()), {"bias": torch.randn(3)}, ValueError, r"bias must have shape \(4,\)"),
        ((_x(), torch.empty(4, 3, 3, 3, device="meta")), {}, ValueError, "same device"),
        ((_x(), _w()), {"stride": 0}, ValueError, "stride=0 is not allowed"),
        ((_x(), _w()), {"stride": 1.5}, TypeError, "stride must be an int or a pair"),
        ((_x(), _w()), {"padding": -1}, ValueError, "padding=-1 is not allowed"),
        ((_x(), _w()), {"padding": "same"}, TypeError, "padding must be an int or a pair of ints, got the string"),
        ((torch.randn(1, 3, 2, 2), _w()), {}, ValueError, "smaller than the kernel"),
        ((_x(), _w()), {"backend": "cudnn"}, ValueError, "backend='cudnn'"),
        ((_x(), _w()), {"backend": "triton"}, ValueError, "needs CUDA tensors"),
        ((_x(), _w()), {"policy": "fixed"}, TypeError, "kernels.Reduction"),
        ((_x(), _w()), {"policy": Reduction("splitk", splits=28)}, ValueError, "forward: splits=28 exceeds.*K=27"),
    ],
)
def test_invalid_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        conv2d(*args, **kwargs)


def test_splits_are_checked_per_role_before_any_work():
    x = torch.randn(1, 3, 3, 3, requires_grad=True)  # 3x3 kernel, no padding: one output pixel
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="weight_grad: splits=2 exceeds the reduction length K=1"):
        conv2d(x, w, policy=Policy(weight_grad=Reduction("splitk", splits=2)))
    with pytest.raises(ValueError, match="input_grad: splits=37 exceeds the reduction length K=36"):
        conv2d(x, w, policy=Policy(input_grad=Reduction("splitk", splits=37)))
    with torch.no_grad():  # no backward will run, so only the forward is checked
        conv2d(x, w, policy=Policy(weight_grad=Reduction("splitk", splits=2)))


def test_fp64_precision_is_rejected_on_the_interpreter_before_running():
    r = Reduction(precision="fp64", accumulate="fp64")
    with pytest.raises(ValueError, match="forward: precision='fp64'"):
        conv2d(_x(), _w(), policy=r, backend="interpret")
