"""Fuzzing the kernels on the emulate backend against float64, through the public API only.

Random shapes (0 and 1 included), operand layouts (contiguous, transposed, sliced, expanded with
stride 0), input dtypes, modes, splits, seeds, granularities, precisions, accumulate formats, and
which operands need gradients; convolutions also draw stride, padding and non-square odd kernels.

The bound. Every output (and gradient) element is a sum of K products; with |A|@|B| (the same sum
of absolute products, computed in float64) as its scale, the emulated result differs from the
float64 one by at most

    bound = ((1 + g(2, u_p)) (1 + g(L, u_c)) (1 + g(S + 1, u_a)) (1 + u_o) - 1) * |A|@|B| + floor

(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 3.1: a sum of n terms
computed in any order with unit roundoff u is within g(n, u) = n u / (1 - n u) of the exact sum,
relative to the sum of the terms' magnitudes), where
  u_p  the operand precision (fp32 2^-24, tf32 and fp16 2^-11, bf16 2^-8, fp64 2^-53): each
       operand is rounded once, so a product carries at most two such roundings;
  L    the longest chunk, ceil(K / S) products summed in fp32 (fp64 for the fp64 reference path)
       with u_c = 2^-24 (2^-53); a product of two fp32 operands rounds once more, counted in L;
  S    the splits: each chunk partial is rounded to the accumulate format (u_a) and the S - 1
       additions between chunks round in it too;
  u_o  the output dtype's unit roundoff (the result is converted once at the end);
  floor  (S + 2) subnormal spacings of the accumulate and output formats, for results near zero.
So the tolerance grows with K through L (inside chunks) and S (between them), and with the
coarsest format involved. Inputs are drawn in [-1, 1], so no sum overflows even fp16 (|sum| <= K).

SYMBREAK_FUZZ_EXAMPLES=N runs N examples per property (default: a CI-sized count).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import kernels
from kernels import ACCUMULATES, GRANULARITIES, MODES, PRECISIONS, CallCounter, Policy, Reduction, conv2d, counting, matmul
from test_fuzz_settings import fuzz
from test_run_support import bits

UNIT_ROUNDOFF = {"fp64": 2.0**-53, "fp32": 2.0**-24, "tf32": 2.0**-11, "fp16": 2.0**-11, "bf16": 2.0**-8}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")


def gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def subnormal_spacing(dtype: torch.dtype) -> float:
    info = torch.finfo(dtype)
    return info.smallest_normal * info.eps


def error_bound(reduction: Reduction, k: int, out_dtype: torch.dtype, magnitude: torch.Tensor) -> torch.Tensor:
    """The module docstring's bound for results of `reduction` over K terms with scale `magnitude`."""
    splits = max(reduction.splits, 1)
    chunk = math.ceil(k / splits) if k else 0
    inner = UNIT_ROUNDOFF["fp64" if reduction.precision == "fp64" else "fp32"]
    acc_dtype = DTYPES[reduction.accumulate]
    relative = ((1 + gamma(2, UNIT_ROUNDOFF[reduction.precision])) * (1 + gamma(chunk, inner))
                * (1 + gamma(splits + 1, UNIT_ROUNDOFF[reduction.accumulate]))
                * (1 + UNIT_ROUNDOFF[NAMES[out_dtype]]) - 1)
    floor = (splits + 2) * subnormal_spacing(acc_dtype) + subnormal_spacing(out_dtype)
    return relative * magnitude + floor


def leaf(tensor: torch.Tensor) -> torch.Tensor:
    """A float64 copy of `tensor` that collects its own gradient."""
    return tensor.detach().to(torch.float64, copy=True).requires_grad_()


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    """Every element within its bound; on failure, how many are not, the worst and the first."""
    actual = actual.detach()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    error = (actual.double() - expected).abs()
    bad = ~(error <= bound)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        worst = int((error - bound).flatten().argmax())
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements outside the bound; first at {first}: "
            f"{float(actual.double()[first])} vs {float(expected[first])} (bound {float(bound[first]):.3g}); "
            f"worst excess {float((error - bound).flatten()[worst]):.3g}; NaN in result: "
            f"{bool(actual.isnan().any())}")


# ---------------------------------------------------------------- strategies

@st.composite
def reductions(draw, k: int) -> Reduction:
    """Any Reduction valid for a reduction of length k."""
    mode = draw(st.sampled_from(MODES))
    precision = draw(st.sampled_from(PRECISIONS))
    accumulate = "fp64" if precision == "fp64" else draw(st.sampled_from([a for a in ACCUMULATES if a != "fp64"]))
    splits = draw(st.integers(1, max(1, min(k, 9))))
    return Reduction(mode=mode, splits=splits, seed=draw(st.integers(0, 2**32 - 1)),
                     granularity=draw(st.sampled_from(GRANULARITIES)), precision=precision, accumulate=accumulate)


def operand(draw, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """A tensor of `shape` with values in [-1, 1] and a drawn memory layout."""
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "expanded" and shape[0] > 0:  # every row the same: stride 0 along dim 0
        row = torch.rand((1, *shape[1:]), generator=generator, dtype=torch.float64) * 2 - 1
        return row.to(dtype).expand(shape)
    values = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
    if layout == "transposed" and len(shape) == 2:
        return values.t().contiguous().to(dtype).t()
    if layout == "sliced":  # every other element of a wider tensor
        wide = torch.zeros((*shape[:-1], 2 * shape[-1]), dtype=dtype)
        wide[..., ::2] = values.to(dtype)
        return wide[..., ::2]
    return values.to(dtype)


def seeds():
    return st.integers(0, 2**31 - 1)


# ---------------------------------------------------------------- matmul

@st.composite
def matmul_cases(draw):
    m, k, n = (draw(st.sampled_from([0, 1, 2, 3, 7, 16, 33, 64])) for _ in range(3))
    dtype_a, dtype_b = (DTYPES[draw(st.sampled_from(list(DTYPES)))] for _ in range(2))
    generator = torch.Generator().manual_seed(draw(seeds()))
    a, b = operand(draw, (m, k), dtype_a, generator), operand(draw, (k, n), dtype_b, generator)
    grads = draw(st.sampled_from([(False, False), (True, False), (False, True), (True, True)]))
    policy = Policy(forward=draw(reductions(k)), input_grad=draw(reductions(n)), weight_grad=draw(reductions(m)))
    return a, b, grads, policy, generator


def _matmul_with_grads(a, b, grads, policy, upstream=None):
    a, b = a.detach().requires_grad_(grads[0]), b.detach().requires_grad_(grads[1])
    out = matmul(a, b, policy, backend="emulate")
    if any(grads):
        out.backward(upstream)
    return out, a.grad, b.grad


@fuzz(60)
@given(case=matmul_cases())
def test_matmul_and_its_gradients_are_within_the_bound_of_float64(case):
    a, b, grads, policy, generator = case
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    upstream = (torch.rand(a.shape[0], b.shape[1], generator=generator, dtype=torch.float64) * 2 - 1).to(out_dtype)
    out, grad_a, grad_b = _matmul_with_grads(a, b, grads, policy, upstream)

    exact_a, exact_b, exact_g = leaf(a), leaf(b), upstream.double()
    (exact_a @ exact_b).backward(exact_g)
    size_a, size_b = leaf(a.abs()), leaf(b.abs())
    magnitude = size_a @ size_b
    magnitude.backward(exact_g.abs())
    k, m, n = a.shape[1], a.shape[0], b.shape[1]
    assert out.dtype == out_dtype
    assert_within(out, (exact_a @ exact_b).detach(), error_bound(policy.forward, k, out_dtype, magnitude.detach()),
                  f"matmul forward {policy.forward.describe()}")
    if grads[0]:
        assert grad_a.dtype == a.dtype
        assert_within(grad_a, exact_a.grad, error_bound(policy.input_grad, n, a.dtype, size_a.grad), "input grad")
    if grads[1]:
        assert grad_b.dtype == b.dtype
        assert_within(grad_b, exact_b.grad, error_bound(policy.weight_grad, m, b.dtype, size_b.grad), "weight grad")


@fuzz(40)
@given(case=matmul_cases())
def test_fixed_and_splitk_matmul_repeat_bit_for_bit(case):
    a, b, grads, policy, generator = case
    assume(all(getattr(policy, role).mode != "atomic" for role in ("forward", "input_grad", "weight_grad")))
    upstream = torch.rand(a.shape[0], b.shape[1], generator=generator).to(torch.promote_types(a.dtype, b.dtype))
    runs = []
    for _ in range(2):
        with counting(CallCounter()):
            runs.append(_matmul_with_grads(a, b, grads, policy, upstream))
    for first, second in zip(*runs):
        assert (first is None) == (second is None)
        if first is not None:
            assert torch.equal(bits(first.detach()), bits(second.detach())), f"{policy.describe()}: a repeat changed bits"


# ---------------------------------------------------------------- conv2d

@st.composite
def conv_cases(draw):
    batch, c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, kh // 2 + 1)), draw(st.integers(0, kw // 2 + 1)))
    height = draw(st.integers(max(1, kh - 2 * padding[0]), 9))
    width = draw(st.integers(max(1, kw - 2 * padding[1]), 9))
    dtype_x, dtype_w = (DTYPES[draw(st.sampled_from(list(DTYPES)))] for _ in range(2))
    generator = torch.Generator().manual_seed(draw(seeds()))
    x = operand(draw, (batch, c_in, height, width), dtype_x, generator)
    if draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    w = operand(draw, (c_out, c_in, kh, kw), dtype_w, generator)
    out_h, out_w = ((size + 2 * pad - k) // s + 1 for size, pad, k, s in
                    zip((height, width), padding, (kh, kw), stride))
    lengths = {"forward": c_in * kh * kw, "input_grad": c_out * kh * kw, "weight_grad": batch * out_h * out_w}
    policy = Policy(**{role: draw(reductions(length)) for role, length in lengths.items()})
    grads = draw(st.sampled_from([(False, False), (True, False), (False, True), (True, True)]))
    return x, w, stride, padding, grads, policy, lengths, generator


@fuzz(40)
@given(case=conv_cases())
def test_conv2d_and_its_gradients_are_within_the_bound_of_float64(case):
    x, w, stride, padding, grads, policy, lengths, generator = case
    out_dtype = torch.promote_types(x.dtype, w.dtype)
    x_in, w_in = x.detach().requires_grad_(grads[0]), w.detach().requires_grad_(grads[1])
    out = conv2d(x_in, w_in, stride=stride, padding=padding, policy=policy, backend="emulate")
    upstream = (torch.rand(out.shape, generator=generator, dtype=torch.float64) * 2 - 1).to(out_dtype)
    if any(grads):
        out.backward(upstream)

    exact_x, exact_w = leaf(x), leaf(w)
    exact = F.conv2d(exact_x, exact_w, stride=stride, padding=padding)
    exact.backward(upstream.double())
    size_x, size_w = leaf(x.abs()), leaf(w.abs())
    magnitude = F.conv2d(size_x, size_w, stride=stride, padding=padding)
    magnitude.backward(upstream.double().abs())
    assert out.dtype == out_dtype
    assert_within(out, exact.detach(), error_bound(policy.forward, lengths["forward"], out_dtype, magnitude.detach()),
                  f"conv2d forward {policy.forward.describe()}")
    if grads[0]:
        assert_within(x_in.grad, exact_x.grad,
                      error_bound(policy.input_grad, lengths["input_grad"], x.dtype, size_x.grad), "conv input grad")
    if grads[1]:
        assert_within(w_in.grad, exact_w.grad,
                      error_bound(policy.weight_grad, lengths["weight_grad"], w.dtype, size_w.grad), "conv weight grad")


@fuzz(25)
@given(case=conv_cases())
def test_fixed_and_splitk_conv2d_repeat_bit_for_bit(case):
    x, w, stride, padding, grads, policy, _, generator = case
    assume(all(getattr(policy, role).mode != "atomic" for role in ("forward", "input_grad", "weight_grad")))
    runs = []
    for _ in range(2):
        with counting(CallCounter()):
            x_in, w_in = x.detach().requires_grad_(grads[0]), w.detach().requires_grad_(grads[1])
            out = conv2d(x_in, w_in, stride=stride, padding=padding, policy=policy, backend="emulate")
            if any(grads):
                out.backward(torch.ones_like(out))
            runs.append((out, x_in.grad, w_in.grad))
    for first, second in zip(*runs):
        assert (first is None) == (second is None)
        if first is not None:
            assert torch.equal(bits(first.detach()), bits(second.detach())), f"{policy.describe()}: a repeat changed bits"


# ---------------------------------------------------------------- non-finite inputs

@fuzz(30)
@given(m=st.integers(1, 6), k=st.integers(1, 12), n=st.integers(1, 6), data=st.data())
def test_nan_and_inf_inputs_give_the_float64_non_finite_pattern(m, k, n, data):
    # Small integers are exact in every format (0 included, so 0 * inf = NaN in both), so only the
    # order of the additions differs from float64, and it cannot change which sums are NaN or inf.
    generator = torch.Generator().manual_seed(data.draw(seeds()))
    a = torch.randint(-3, 4, (m, k), generator=generator).double()
    b = torch.randint(-3, 4, (k, n), generator=generator).double()
    for tensor in (a, b):
        for index in data.draw(st.lists(st.integers(0, tensor.numel() - 1), min_size=1, max_size=3)):
            tensor.view(-1)[index] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    reduction = data.draw(reductions(k))
    dtype = DTYPES[data.draw(st.sampled_from(list(DTYPES)))]
    out = matmul(a.to(dtype), b.to(dtype), reduction, backend="emulate").double()
    exact = a @ b
    assert torch.equal(out.isnan(), exact.isnan()), f"{reduction.describe()}: NaN pattern differs"
    infinite = exact.isinf()
    assert torch.equal(out[infinite], exact[infinite]), f"{reduction.describe()}: inf pattern differs"


# ---------------------------------------------------------------- malformed arguments

COMPLEX = torch.ones(2, 2, dtype=torch.complex64)
MALFORMED = [  # (function, args, kwargs, error, words the message must hold)
    (CallCounter, (math.inf,), {}, TypeError, "start must be an int"),
    (CallCounter, (-1,), {}, ValueError, "start must be >= 0"),
    (kernels.reset_calls, (math.inf,), {}, TypeError, "start must be an int"),
    (CallCounter().load_state_dict, ({"next_call": 2.5},), {}, TypeError, "next_call"),
    (kernels.Linear, (1, -1), {}, ValueError, "out_features must be >= 0"),
    (kernels.Linear, (1.5, 2), {}, TypeError, "in_features must be an int"),
    (kernels.Linear, (1, 2, torch.ones(3)), {}, TypeError, "bias must be True or False"),
    (kernels.Conv2d, (1, -1, 1), {}, ValueError, "out_channels must be >= 0"),
    (kernels.Conv2d, (True, COMPLEX, 1), {}, TypeError, "in_channels must be an int"),
    (kernels.Conv2d, (1, COMPLEX, 1), {}, TypeError, "out_channels must be an int"),
    (kernels.Conv2d, (1, 2, COMPLEX), {}, TypeError, "kernel_size must be an int or a pair"),
    (kernels.Conv2d, (1, 2, (3, 3, 3)), {}, TypeError, "kernel_size must be an int or a pair"),
    (kernels.Conv2d, (1, 2, 3), {"stride": object()}, TypeError, "stride must be an int or a pair"),
    (kernels.Conv2d, (1, 2, 3), {"bias": torch.ones(2)}, TypeError, "bias must be True or False"),
    (kernels.reducing_layers, (None,), {}, TypeError, "model must be a torch.nn.Module"),
    (kernels.patch, (torch.nn.Linear(2, 2), None), {"strict": torch.ones(2)}, TypeError, "strict must be True or False"),
    (kernels.Linear(2, 3), ([1.0, 2.0],), {}, TypeError, "x must be a torch.Tensor"),
    (kernels.Conv2d(1, 2, 3), (None,), {}, TypeError, "x must be a torch.Tensor"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "error", "words"), MALFORMED)
def test_malformed_arguments_get_one_clear_error(function, args, kwargs, error, words):
    # Unchecked, these escape from int(), torch or the model as OverflowError, RuntimeError,
    # NotImplementedError or AttributeError, naming no argument.
    with pytest.raises(error, match=words):
        function(*args, **kwargs)
