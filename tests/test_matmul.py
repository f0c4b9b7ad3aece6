"""kernels.matmul on the emulate backend: accuracy, order semantics, reproducibility, errors."""
import math

import pytest
import torch

from kernels import Policy, Reduction, counting, matmul
from kernels.calls import CallCounter
from kernels.order import GOLDEN, ORDER_TILE, PERMUTATIONS, chunk_bounds, chunk_order, order_index

UNIT_ROUNDOFF = {"fp64": 2.0**-53, "fp32": 2.0**-24, "tf32": 2.0**-11, "fp16": 2.0**-11, "bf16": 2.0**-8}
DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def error_bound(a, b, r: Reduction, out_dtype) -> torch.Tensor:
    """First-order worst-case bound on |matmul - exact| per element.

    Rounding both operands costs 2u_op per product; a chunk of length L summed in fp32 costs
    L*u_fp32 (fp64 for the reference path); rounding each partial to the accumulate dtype and
    the splits-1 additions between chunks cost splits*u_acc; the final cast costs u_out. Each
    term multiplies (|A| @ |B|), the classic bound of Higham's recursive summation analysis.
    """
    k = a.shape[1]
    longest_chunk = max((hi - lo for lo, hi in chunk_bounds(k, r.splits)), default=0)
    u_inner = UNIT_ROUNDOFF["fp64" if r.precision == "fp64" else "fp32"]
    gamma = (
        2 * UNIT_ROUNDOFF[r.precision]
        + longest_chunk * u_inner
        + r.splits * UNIT_ROUNDOFF[r.accumulate]
        + UNIT_ROUNDOFF[DTYPE_NAME[out_dtype]]
    )
    return 1.01 * gamma * (a.double().abs() @ b.double().abs()) + 1e-30


def assert_within_bound(y, a, b, r):
    exact = a.double() @ b.double()
    bound = error_bound(a, b, r, y.dtype)
    err = (y.double() - exact).abs()
    bad = err > bound
    assert not torch.isnan(y).any(), f"{r.describe()}: {int(torch.isnan(y).sum())} NaN in output"
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{r.describe()}: {int(bad.sum())}/{y.numel()} elements exceed the bound; first at {first}: "
            f"error {err[first].item():.3e} > bound {bound[first].item():.3e}"
        )


def draw(generator, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=generator).to(dtype)


MODES = [
    Reduction(),
    Reduction("fixed", splits=5),
    Reduction("splitk", splits=8, seed=3),
    Reduction("splitk", splits=3, granularity="tile"),
    Reduction("splitk", splits=4, granularity="call"),
    Reduction("atomic", splits=6),
]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("accumulate", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("base", MODES, ids=lambda r: r.describe())
def test_matches_float64_within_bound(generator, base, precision, accumulate):
    r = Reduction(base.mode, base.splits, base.seed, base.granularity, precision, accumulate)
    a, b = draw(generator, 37, 301), draw(generator, 301, 45)
    assert_within_bound(matmul(a, b, r), a, b, r)


def test_lower_precision_is_measurably_less_accurate(generator):
    a, b = draw(generator, 64, 512), draw(generator, 512, 64)
    exact = a.double() @ b.double()
    errors = {p: (matmul(a, b, Reduction(precision=p)).double() - exact).abs().max().item() for p in UNIT_ROUNDOFF if p != "fp64"}
    assert errors["fp32"] < errors["tf32"] and errors["fp32"] < errors["bf16"], errors
    assert errors["fp16"] < errors["bf16"], errors


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 1, 5), (1, 33, 1), (65, 129, 17), (3, 1000, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_odd_shapes_and_input_dtypes(generator, shape, dtype):
    m, k, n = shape
    r = Reduction("splitk", splits=min(k, 4))
    a, b = draw(generator, m, k, dtype=dtype), draw(generator, k, n, dtype=dtype)
    y = matmul(a, b, r)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_within_bound(y, a, b, r)


@pytest.mark.parametrize("m,k,n", [(0, 5, 3), (4, 0, 3), (4, 5, 0)])
def test_empty_operands_give_torch_shapes(m, k, n):
    y = matmul(torch.randn(m, k), torch.randn(k, n), Reduction())
    assert y.shape == (m, n) and torch.equal(y, torch.zeros(m, n))


def test_transposed_and_strided_operands_equal_contiguous(generator):
    a = draw(generator, 90, 40).t()[:, ::2]  # (40, 45), transposed and strided
    b = draw(generator, 60, 90)[::2].t()[:45]  # (45, 30), transposed and strided
    r = Reduction("splitk", splits=5, seed=11)
    with counting():
        strided = matmul(a, b, r)
    with counting():
        dense = matmul(a.contiguous(), b.contiguous(), r)
    assert not a.is_contiguous() and not b.is_contiguous()
    assert torch.equal(strided, dense)


@pytest.mark.parametrize(
    "dtypes,expected",
    [
        ((torch.float16, torch.float16), torch.float16),
        ((torch.bfloat16, torch.bfloat16), torch.bfloat16),
        ((torch.float16, torch.float32), torch.float32),
        ((torch.float32, torch.float64), torch.float64),
    ],
)
def test_output_dtype_follows_torch_promotion(dtypes, expected):
    a = torch.randn(3, 4).to(dtypes[0])
    b = torch.randn(4, 2).to(dtypes[1])
    assert matmul(a, b).dtype == expected == torch.promote_types(*dtypes)


def test_fixed_is_bitwise_repeatable_and_adds_chunks_in_index_order(generator):
    a, b = draw(generator, 50, 1000), draw(generator, 1000, 30)
    r = Reduction("fixed", splits=7)
    first = matmul(a, b, r)
    assert all(torch.equal(first, matmul(a, b, r)) for _ in range(3))
    total = None
    for lo, hi in chunk_bounds(1000, 7):  # independent construction of the fixed order
        part = a[:, lo:hi] @ b[lo:hi]
        total = part if total is None else total + part
    assert torch.equal(first, total)


def test_chunk_bounds_are_balanced_and_cover_k():
    for k in (1, 7, 8, 100, 131072):
        for splits in sorted({s for s in (1, 2, 3, 7, k) if s <= k}):
            bounds = chunk_bounds(k, splits)
            sizes = [hi - lo for lo, hi in bounds]
            assert bounds[0][0] == 0 and bounds[-1][1] == k
            assert all(hi == lo2 for (_, hi), (lo2, _) in zip(bounds, bounds[1:]))
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def _fmix32_reference(x):
    x ^= x >> 16
    x = (x * 0x85EBCA6B) % 2**32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) % 2**32
    return x ^ (x >> 16)


def test_chunk_order_matches_the_documented_definition():
    """Recompute the splitk order from the kernels.order docstring with plain Python ints."""
    seed, call, splits, m, n = 12345, 7, 6, 5, 70
    key = _fmix32_reference(_fmix32_reference(seed ^ GOLDEN) ^ call)
    table = []
    for t in range(PERMUTATIONS):
        row_salt = _fmix32_reference(key ^ (((t + 1) * GOLDEN) % 2**32))
        ranks = [_fmix32_reference(row_salt ^ ((s * GOLDEN) % 2**32)) for s in range(splits)]
        table.append(sorted(range(splits), key=lambda s: (ranks[s], s)))
    for granularity in ("call", "tile", "element"):
        order = chunk_order(key, order_index(m, n, granularity), splits)
        for row in range(m):
            for col in range(n):
                if granularity == "call":
                    i, where = 0, (slice(None), 0, 0)
                elif granularity == "tile":
                    i, where = (row // ORDER_TILE) * math.ceil(n / ORDER_TILE) + col // ORDER_TILE, (slice(None), row, col)
                else:
                    i, where = row * n + col, (slice(None), row, col)
                expected = table[_fmix32_reference(key ^ i) % PERMUTATIONS]
                assert order[where].tolist() == expected, (granularity, row, col)


def test_orders_are_spread_over_the_permutation_table():
    order = chunk_order(99, order_index(64, 64, "element"), 4)
    distinct = {tuple(col) for col in order.reshape(4, -1).t().tolist()}
    assert len(distinct) == 24, "all 4! orders of 4 chunks occur among 4096 elements"


def test_splitk_replays_from_seed_and_counter(generator):
    a, b = draw(generator, 40, 4096), draw(generator, 4096, 40)
    r = Reduction("splitk", splits=16, seed=5)
    with counting():
        run1 = [matmul(a, b, r) for _ in range(3)]
    with counting():
        run2 = [matmul(a, b, r) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(run1, run2))
    assert not torch.equal(run1[0], run1[1]), "the order must advance call by call"
    with counting(CallCounter(start=2)):
        assert torch.equal(matmul(a, b, r), run1[2]), "a counter started at call 2 replays call 2"


def test_splitk_seed_changes_some_bits_and_call_granularity_keeps_rows_alike(generator):
    a, b = draw(generator, 40, 4096), draw(generator, 4096, 40)
    with counting():
        y0 = matmul(a, b, Reduction("splitk", splits=16, seed=0))
    with counting():
        y1 = matmul(a, b, Reduction("splitk", splits=16, seed=1))
    differing = (y0 != y1).sum().item()
    assert 0 < differing < y0.numel(), f"{differing} of {y0.numel()} elements differ"

    same_rows = a[:1].expand(8, -1).contiguous()  # identical inputs -> identical outputs unless the order differs per element
    for granularity, expect_identical in (("call", True), ("tile", True), ("element", False)):
        y = matmul(same_rows, b, Reduction("splitk", splits=16, granularity=granularity))
        identical = bool((y == y[:1]).all())
        assert identical == expect_identical, granularity


def test_atomic_emulation_is_correct_and_varies_between_calls(generator):
    a, b = draw(generator, 64, 2048), draw(generator, 2048, 64)
    r = Reduction("atomic", splits=16)
    results = [matmul(a, b, r) for _ in range(4)]
    for y in results:
        assert_within_bound(y, a, b, r)
    assert any(not torch.equal(results[0], y) for y in results[1:]), "emulated atomics draw a fresh order each call"


def test_fp16_accumulate_rounds_every_partial_and_addition(generator):
    a, b = draw(generator, 16, 64), draw(generator, 64, 16)
    r = Reduction("fixed", splits=4, accumulate="fp16")
    expected = None
    for lo, hi in chunk_bounds(64, 4):
        part = (a[:, lo:hi] @ b[lo:hi]).half()
        expected = part if expected is None else (expected.float() + part.float()).half()
    assert torch.equal(matmul(a, b, r), expected.float())


def test_tf32_rounding_bit_patterns():
    from kernels.formats import round_to_tf32

    ulp = 2.0**-10
    x = torch.tensor(
        [1 + ulp / 2 - 2.0**-20, 1 + ulp / 2, 1 + 1.5 * ulp, -(1 + 1.5 * ulp), float("inf"), float("nan"), 3.4028234e38, 0.0],
        dtype=torch.float32,
    )
    y = round_to_tf32(x)
    assert y[:4].tolist() == [1.0, 1.0, 1 + 2 * ulp, -(1 + 2 * ulp)]  # below half, tie to even (twice)
    assert y[4] == float("inf") and torch.isnan(y[5]) and y[6] == float("inf") and y[7] == 0.0


def test_gradients_follow_the_policy_and_match_float64(generator):
    a = draw(generator, 20, 300).requires_grad_()
    b = draw(generator, 300, 10).requires_grad_()
    noisy = Reduction("splitk", splits=4, seed=9)
    policy = Policy(forward=Reduction(), input_grad=noisy, weight_grad=Reduction("fixed", splits=3))
    with counting() as counter:
        y = matmul(a, b, policy)
        assert counter.next_call == 0, "a fixed forward takes no call number"
        grad = draw(generator, 20, 10)
        y.backward(grad)
        assert counter.next_call == 1, "only the splitk input-gradient GEMM takes a call number"
    a0, b0 = a.detach().double(), b.detach().double()
    ga, gb = grad.double() @ b0.t(), a0.t() @ grad.double()
    assert torch.allclose(a.grad.double(), ga, rtol=0, atol=float(1e-5 * (grad.abs().double() @ b0.abs().t()).max()))
    assert torch.allclose(b.grad.double(), gb, rtol=0, atol=float(1e-5 * (a0.abs().t() @ grad.abs().double()).max()))


def test_stacks_are_a_gemm_per_entry_in_every_role(generator):
    """(B, M, K) @ (B, K, N): each entry's forward and gradients equal that entry's own call, bit
    for bit, when the call numbers are replayed entry by entry (forward, then each role's entries)."""
    a = draw(generator, 3, 6, 40).requires_grad_()
    b = draw(generator, 3, 40, 5).requires_grad_()
    grad = draw(generator, 3, 6, 5)
    noisy = Reduction("splitk", splits=4, seed=2)
    with counting() as counter:
        y = matmul(a, b, noisy)
        ga, gb = torch.autograd.grad(y, (a, b), grad)
    assert counter.next_call == 9
    for i in range(3):
        with counting(CallCounter(i)):
            expected = matmul(a[i].detach(), b[i].detach(), noisy)
        assert torch.equal(y[i], expected)
        with counting(CallCounter(3 + i)):
            assert torch.equal(ga[i], matmul(grad[i], b[i].detach().t(), noisy))
        with counting(CallCounter(6 + i)):
            assert torch.equal(gb[i], matmul(a[i].detach().t(), grad[i], noisy))
    assert matmul(torch.ones(0, 2, 3), torch.ones(0, 3, 4)).shape == (0, 2, 4)


def test_gradcheck_through_the_float64_reference_path(generator):
    r = Reduction("splitk", splits=3, precision="fp64", accumulate="fp64", granularity="call")
    a = torch.randn(4, 9, dtype=torch.float64, generator=generator, requires_grad=True)
    b = torch.randn(9, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: matmul(x, y, r), (a, b))


def test_native_backend_is_torch_matmul(generator):
    a, b = draw(generator, 9, 17), draw(generator, 17, 5)
    assert torch.equal(matmul(a, b, Reduction("splitk"), backend="native"), a @ b)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"mode": "random"}, ValueError, "mode='random'.*'fixed', 'splitk', 'atomic'"),
        ({"precision": "fp8"}, ValueError, "precision='fp8'.*'tf32'"),
        ({"accumulate": "tf32"}, ValueError, "accumulate='tf32'"),
        ({"granularity": "row"}, ValueError, "granularity='row'.*'element'"),
        ({"splits": 0}, ValueError, "splits must be >= 1"),
        ({"splits": 2.0}, TypeError, "splits must be an int"),
        ({"seed": -1}, ValueError, "seed must be in"),
        ({"seed": 2**32}, ValueError, "seed must be in"),
        ({"precision": "fp64"}, ValueError, "fp64"),
    ],
)
def test_invalid_reduction_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Reduction(**kwargs)


def test_reduction_is_immutable_and_defaults_splits_by_mode():
    assert Reduction().splits == 1 and Reduction("splitk").splits == 8 and Reduction("atomic").splits == 8
    with pytest.raises(Exception):
        Reduction().mode = "splitk"


@pytest.mark.parametrize(
    "a,b,call,error,match",
    [
        (torch.randn(3, 4), torch.randn(5, 2), {}, ValueError, r"a.shape\[-1\] must equal b.shape\[-2\]"),
        (torch.randn(3), torch.randn(3, 2), {}, ValueError, "2-D"),
        (torch.randn(2, 3, 4), torch.randn(3, 4, 2), {}, ValueError, r"stacks \(B, M, K\) and \(B, K, N\)"),
        (torch.randn(2, 3, 4), torch.randn(4, 2), {}, ValueError, "stacks"),
        (torch.ones(3, 4, dtype=torch.int32), torch.randn(4, 2), {}, TypeError, "a has dtype int32"),
        (torch.randn(3, 4), torch.ones(4, 2, dtype=torch.int64), {}, TypeError, "b has dtype int64"),
        (torch.randn(3, 4), [[1.0]], {}, TypeError, "b must be a torch.Tensor"),
        (torch.randn(3, 4), torch.empty(4, 2, device="meta"), {}, ValueError, "same device"),
        (torch.randn(3, 4), torch.randn(4, 2), {"backend": "cudnn"}, ValueError, "backend='cudnn'.*'emulate'"),
        (torch.randn(3, 4), torch.randn(4, 2), {"backend": "triton"}, ValueError, "needs CUDA tensors"),
        (torch.randn(3, 4), torch.randn(4, 2), {"reduction": Reduction("splitk", splits=5)}, ValueError, "splits=5 exceeds.*K=4"),
        (torch.randn(3, 4), torch.randn(4, 2), {"reduction": "splitk"}, TypeError, "kernels.Reduction"),
    ],
)
def test_invalid_matmul_arguments(a, b, call, error, match):
    with pytest.raises(error, match=match):
        matmul(a, b, **call)


def test_interpret_backend_requires_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        matmul(torch.randn(2, 2), torch.randn(2, 2), backend="interpret")


def test_fp64_reduction_is_rejected_on_triton_backends(monkeypatch):
    from kernels.checks import check_reduction_on_backend

    with pytest.raises(ValueError, match="weight_grad: precision='fp64'"):
        check_reduction_on_backend(Reduction(precision="fp64", accumulate="fp64"), "interpret", "weight_grad")
