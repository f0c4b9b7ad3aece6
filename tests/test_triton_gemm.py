"""The Triton GEMM: under the interpreter on CPU (tiny shapes), and compiled on a GPU (`gpu`).

References: float64 products of the original operands, and the emulate backend, which follows
the same chunking, rounding and chunk order. Bitwise agreement with emulate cannot hold in
general: inside a chunk the Triton dot (numpy's matmul under the interpreter, tensor cores on a
GPU) sums products in its own order. It does hold, and is checked bit for bit, where every
chunk partial is exact (integer-valued operands, or per-chunk powers of two): then the only
rounding left is the ordered addition of chunks, which is exactly what the modes promise.
"""
from __future__ import annotations

import math

import pytest
import torch

from kernels import CallCounter, Reduction, counting, matmul
from kernels.backends import interpreter_enabled
from kernels.formats import ACCUMULATE_DTYPES
from kernels.order import chunk_bounds

MODES = ("fixed", "splitk", "atomic")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
ACCUMULATES = ("fp32", "fp16", "bf16")
GRANULARITIES = ("call", "tile", "element")
# unit roundoff of each format (half an ulp of 1)
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "tf32": 2.0**-11, "fp16": 2.0**-11, "bf16": 2.0**-8}
DTYPE_FORMAT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

interpreter = pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 (no GPU)")


def error_bound(a: torch.Tensor, b: torch.Tensor, reduction: Reduction, out_dtype: torch.dtype) -> torch.Tensor:
    """First-order worst-case error of the GEMM against exact float64 products, per element.

    |error| <= (2 u_p + L u_32 + S u_acc + u_out) * (|a| @ |b|) + S * tiny_acc: operand rounding
    (u_p per operand), fp32 summation inside a chunk of at most L terms, rounding each of the S
    partials to the accumulate format and the S - 1 additions between them, and the final cast;
    tiny_acc (the accumulate format's smallest subnormal) covers underflow. It grows with K
    through L and S.
    """
    k = a.shape[1]
    splits = reduction.splits
    longest = max((hi - lo for lo, hi in chunk_bounds(k, splits)), default=0)
    u_acc = UNIT_ROUNDOFF[reduction.accumulate]
    u_out = UNIT_ROUNDOFF.get(DTYPE_FORMAT.get(out_dtype, "fp32"), 0.0) if out_dtype != torch.float64 else 0.0
    relative = 2 * UNIT_ROUNDOFF[reduction.precision] + longest * 2.0**-24 + splits * u_acc + u_out
    tiny = torch.finfo(ACCUMULATE_DTYPES[reduction.accumulate]).smallest_normal * 2.0**-10
    return 1.1 * relative * (a.double().abs() @ b.double().abs()) + splits * tiny


def describe_mismatch(actual: torch.Tensor, expected: torch.Tensor, allowed: torch.Tensor | None = None) -> str:
    """Count, first index and worst value of the elements outside `allowed` (bitwise if None)."""
    actual, expected = actual.double(), expected.double()
    diff = (actual - expected).abs()
    bad = ~(actual == expected) if allowed is None else ~(diff <= allowed)
    bad &= ~(actual.isnan() & expected.isnan())
    if not bad.any():
        return "no mismatch"
    first = tuple(int(i) for i in bad.nonzero()[0])
    worst = tuple(int(i) for i in (diff.nan_to_num(math.inf) * bad).flatten().argmax().unravel_index(diff.shape))
    return (
        f"{int(bad.sum())}/{bad.numel()} elements differ; first at {first}: {actual[first].item()!r} vs "
        f"{expected[first].item()!r}; worst at {worst}: {actual[worst].item()!r} vs {expected[worst].item()!r}"
        + (f" (allowed {allowed[worst].item():.3g})" if allowed is not None else "")
        + f"; NaN in actual: {int(actual.isnan().sum())}, inf: {int(actual.isinf().sum())}"
    )


def assert_within(actual, expected, allowed, what: str) -> None:
    message = describe_mismatch(actual, expected, allowed)
    assert message == "no mismatch", f"{what}: {message}"


def assert_bitwise(actual, expected, what: str) -> None:
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} vs {expected.dtype}"
    message = describe_mismatch(actual, expected)
    assert message == "no mismatch", f"{what}: {message}"


def run(a, b, reduction, backend, call=0):
    """One matmul whose splitk key is call number `call` of a fresh counter."""
    with counting(CallCounter(call)):
        return matmul(a, b, reduction, backend=backend)


def random_operands(generator, m, k, n, dtype=torch.float32):
    return torch.randn(m, k, generator=generator).to(dtype), torch.randn(k, n, generator=generator).to(dtype)


def integer_operands(generator, m, k, n, dtype=torch.float32):
    """Entries in [-2, 2]: for K <= 64 every partial and sum is an integer below 256, exact in bf16."""
    assert k <= 64
    a = torch.randint(-2, 3, (m, k), generator=generator).to(dtype)
    b = torch.randint(-2, 3, (k, n), generator=generator).to(dtype)
    return a, b


def chunk_scaled_operands(generator, m, k, n, splits, accumulate):
    """Operands whose chunk partials are exact but whose sum over chunks rounds, order-dependently.

    Each K chunk's columns of a are small integers times a power of two, large for even chunks
    and small for odd ones, more than the format's precision apart (and far from fp16
    overflow): a chunk partial is exact in every precision and accumulate format, while the sum
    of large and small partials rounds differently for different orders.
    """
    bits = {"fp32": 24, "fp16": 11, "bf16": 8}[accumulate]
    a = torch.randint(-2, 3, (m, k), generator=generator).double()
    b = torch.randint(-1, 2, (k, n), generator=generator).double()
    for chunk, (lo, hi) in enumerate(chunk_bounds(k, splits)):
        a[:, lo:hi] *= 2.0 ** (bits // 2 + 1 if chunk % 2 == 0 else -(bits // 2))
    assert 2 * k < 2**bits, "chunk partials must stay exact"
    return a.float(), b.float()


# ----------------------------------------------------------------------------- interpreter


@interpreter
@pytest.mark.interpreter
@pytest.mark.parametrize("accumulate", ACCUMULATES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode", MODES)
def test_interpret_agrees_with_float64_and_emulate(generator, mode, precision, accumulate):
    a, b = random_operands(generator, 37, 70, 45)
    reduction = Reduction(mode=mode, splits=1 if mode == "fixed" else 3, precision=precision, accumulate=accumulate)
    got = run(a, b, reduction, "interpret")
    emulated = run(a, b, reduction, "emulate")
    exact = a.double() @ b.double()
    bound = error_bound(a, b, reduction, got.dtype)
    assert got.dtype == torch.float32 and got.shape == (37, 45)
    assert_within(got, exact, bound, f"interpret vs float64 [{reduction.describe()}]")
    # both lie within `bound` of the exact result
    assert_within(got, emulated, 2 * bound, f"interpret vs emulate [{reduction.describe()}]")


@interpreter
@pytest.mark.interpreter
@pytest.mark.parametrize("accumulate", ACCUMULATES)
@pytest.mark.parametrize("mode", MODES)
def test_interpret_bitwise_on_exact_sums(generator, mode, accumulate):
    shapes = ((45, 64, 37, 3), (33, 1, 40, 1), (20, 50, 70, 7), (5, 31, 3, 31))  # (M, K, N, splits)
    for precision, (m, k, n, splits) in zip(PRECISIONS, shapes):
        a, b = integer_operands(generator, m, k, n)
        reduction = Reduction(mode=mode, splits=splits, precision=precision, accumulate=accumulate)
        got = run(a, b, reduction, "interpret")
        what = f"{reduction.describe()} {m}x{k}x{n}"
        assert_bitwise(got, run(a, b, reduction, "emulate"), f"interpret vs emulate, {what}")
        assert_bitwise(got, (a.double() @ b.double()).float(), f"interpret vs float64, {what}")


def tie_heavy_values(generator, m, k):
    """fp32 values, a third of them exactly halfway between two tf32 values and a third halfway
    between two bf16 values, so round-to-nearest-even is tested on its ties."""
    bits = torch.randn(m, k, generator=generator).view(torch.int32)
    pick = torch.randint(0, 3, (m, k), generator=generator)
    bits = torch.where(pick == 1, (bits & ~0x1FFF) | 0x1000, bits)
    bits = torch.where(pick == 2, (bits & ~0xFFFF) | 0x8000, bits)
    return bits.view(torch.float32)


@interpreter
@pytest.mark.interpreter
@pytest.mark.parametrize("accumulate", ACCUMULATES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_interpret_rounds_operands_and_partials_bitwise(generator, precision, accumulate):
    """b selects one column of a per output column, so each result is one rounded operand,
    rounded again to the accumulate format: bit-exact on both backends, ties included."""
    m, k, n = 40, 36, 50
    a = tie_heavy_values(generator, m, k)
    b = torch.zeros(k, n)
    b[torch.randint(0, k, (n,), generator=generator), torch.arange(n)] = 1.0
    reduction = Reduction(precision=precision, accumulate=accumulate)
    got = run(a, b, reduction, "interpret")
    assert_bitwise(got, run(a, b, reduction, "emulate"), reduction.describe())
    assert not torch.equal(got, a @ b) or precision == accumulate == "fp32", "rounding had no effect"


@interpreter
@pytest.mark.interpreter
@pytest.mark.parametrize("accumulate", ACCUMULATES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_interpret_splitk_order_is_emulates_order(generator, granularity, accumulate):
    """End to end: exact chunk partials, so the bits depend only on the order chunks are added in."""
    m, k, n, splits = 66, 48, 70, 6  # two order tiles each way, both ragged
    a, b = chunk_scaled_operands(generator, m, k, n, splits, accumulate)
    reduction = Reduction(mode="splitk", splits=splits, seed=7, granularity=granularity, accumulate=accumulate)
    results = {}
    for call in (0, 1):
        got = run(a, b, reduction, "interpret", call)
        assert_bitwise(got, run(a, b, reduction, "emulate", call), f"{reduction.describe()} call {call}")
        results[call] = got
    # the data is order-sensitive: another call's order changes some bits
    assert not torch.equal(results[0], results[1]), "chunk order had no effect: the check would be vacuous"
    fixed = Reduction(mode="fixed", splits=splits, accumulate=accumulate)
    assert_bitwise(run(a, b, fixed, "interpret"), run(a, b, fixed, "emulate"), fixed.describe())


@interpreter
@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_ordered_sum_kernel_matches_emulate_bitwise(generator, dtype, granularity):
    """The second stage alone, on given workspaces of mixed magnitudes, against emulate.sum_in_order."""
    from kernels import gemm_emulate as emulate
    from kernels.order import call_key
    from kernels.order_triton import launch_ordered_sum

    m, n = 70, 130  # two 64-row and three 64-column order tiles, both with ragged edges
    for splits in (1, 2, 5, 8):
        scales = torch.logspace(-4, 4, splits, base=2.0)[:, None, None]
        workspace = (torch.randn(splits, m, n, generator=generator) * scales).to(dtype)
        key = call_key(seed=3, call=splits)
        for ordered in (False, True):
            out = torch.empty(n, m, dtype=torch.float32).t()  # a strided output
            launch_ordered_sum(workspace, out, ordered=ordered, key=key, granularity=granularity)
            partials = emulate.ordered_partials(workspace, key, granularity) if ordered else workspace
            expected = emulate.sum_in_order(partials).float()
            assert_bitwise(out, expected, f"{dtype} splits={splits} ordered={ordered} {granularity}")
    other = torch.empty(m, n)
    launch_ordered_sum(workspace, other, ordered=True, key=key ^ 1, granularity=granularity)
    assert not torch.equal(out, other), "another key gave the same sums: the order check would be vacuous"


@interpreter
@pytest.mark.interpreter
@pytest.mark.parametrize("mode", MODES)
def test_interpret_reads_operands_through_strides(generator, mode):
    """Transposed, sliced and expanded operands give the same bits as their contiguous copies."""
    reduction = Reduction(mode=mode, splits=1 if mode == "fixed" else 4)
    base_a = torch.randn(80, 90, generator=generator)
    base_b = torch.randn(100, 70, generator=generator)
    cases = {
        "transposed": (base_a.t()[:41, :50], base_b.t()[:50, :33]),
        "step slices": (base_a[::2, 1::2][:33, :41], base_b[1::2, ::2][:41, :29]),
        "broadcast row": (base_a[:1, :50].expand(33, 50), base_b[:50, :40]),
    }
    for name, (a, b) in cases.items():
        assert not (a.is_contiguous() and b.is_contiguous())
        strided = run(a, b, reduction, "interpret")
        contiguous = run(a.contiguous(), b.contiguous(), reduction, "interpret")
        assert_bitwise(strided, contiguous, f"{name} operands, {reduction.describe()}")
        assert_within(strided, a.double() @ b.double(), error_bound(a, b, reduction, strided.dtype), name)


@interpreter
@pytest.mark.interpreter
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 17, 1), (33, 1, 40), (40, 33, 1), (1, 40, 33), (65, 97, 34)])
def test_interpret_odd_shapes(generator, shape):
    m, k, n = shape
    a, b = random_operands(generator, m, k, n)
    for mode in MODES:
        reduction = Reduction(mode=mode, splits=min(k, 1 if mode == "fixed" else 5), precision="tf32")
        got = run(a, b, reduction, "interpret")
        assert got.shape == (m, n)
        assert_within(got, a.double() @ b.double(), error_bound(a, b, reduction, got.dtype), f"{shape} {mode}")


@interpreter
@pytest.mark.interpreter
@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 5, 0), (4, 0, 3), (0, 0, 0)])
def test_interpret_empty_shapes(shape):
    m, k, n = shape
    a, b = torch.ones(m, k), torch.ones(k, n)
    got = run(a, b, Reduction(), "interpret")
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert torch.equal(got, torch.zeros(m, n)), "an empty reduction is zero"


@interpreter
@pytest.mark.interpreter
@pytest.mark.parametrize(
    "a_dtype, b_dtype",
    [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32),
     (torch.bfloat16, torch.float64), (torch.float64, torch.float64)],
)
@pytest.mark.parametrize("mode", MODES)
def test_interpret_input_dtypes(generator, a_dtype, b_dtype, mode):
    a = torch.randn(37, 40, generator=generator).to(a_dtype)
    b = torch.randn(40, 29, generator=generator).to(b_dtype)
    reduction = Reduction(mode=mode, splits=1 if mode == "fixed" else 3, precision="bf16", accumulate="fp16")
    got = run(a, b, reduction, "interpret")
    expected_dtype = torch.promote_types(a_dtype, b_dtype)
    assert got.dtype == expected_dtype, f"output dtype {got.dtype}, torch promotes to {expected_dtype}"
    bound = error_bound(a, b, reduction, got.dtype)
    assert_within(got, a.double() @ b.double(), bound, f"{a_dtype} @ {b_dtype} {mode}")
    assert_within(got, run(a, b, reduction, "emulate"), 2 * bound, f"{a_dtype} @ {b_dtype} {mode} vs emulate")


@interpreter
@pytest.mark.interpreter
def test_interpret_propagates_nan_and_inf(generator):
    a, b = random_operands(generator, 20, 40, 24)
    a[3, 5] = float("nan")
    a[7, 0] = float("inf")
    for precision in PRECISIONS:
        reduction = Reduction(mode="splitk", splits=4, precision=precision)
        got, expected = run(a, b, reduction, "interpret"), run(a, b, reduction, "emulate")
        assert torch.equal(got.isnan(), expected.isnan()), f"{precision}: NaN pattern differs"
        assert torch.equal(got.isinf(), expected.isinf()), f"{precision}: inf pattern differs"


@interpreter
@pytest.mark.interpreter
def test_interpret_gradients_follow_policy(generator):
    a = torch.randn(30, 40, generator=generator, requires_grad=True)
    b = torch.randn(40, 20, generator=generator, requires_grad=True)
    grad = torch.randn(30, 20, generator=generator)
    reduction = Reduction(mode="splitk", splits=4, precision="fp16")
    run(a, b, reduction, "interpret").backward(grad)
    got_a, got_b = a.grad.clone(), b.grad.clone()
    exact_a, exact_b = grad.double() @ b.detach().double().t(), a.detach().double().t() @ grad.double()
    assert_within(got_a, exact_a, error_bound(grad, b.detach().t(), reduction, torch.float32), "grad a")
    assert_within(got_b, exact_b, error_bound(a.detach().t(), grad, reduction, torch.float32), "grad b")


# ----------------------------------------------------------------------------- launch configs


def test_gpu_config_depends_on_formats_and_shape_only():
    from kernels.gemm_triton import BLOCK_K, TILES, gemm_config
    from kernels.triton_launch import PIPELINE_BYTES, TARGET_PROGRAMS

    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    big = gemm_config("fp16", f16, f16, 4096, 4096, 1, "direct")
    assert (big.block_m, big.block_n, big.block_k) == (128, 256, 64)
    wgrad = gemm_config("bf16", bf16, bf16, 160, 1440, 8, "workspace")
    assert triton_cdiv(160, wgrad.block_m) * triton_cdiv(1440, wgrad.block_n) * 8 >= TARGET_PROGRAMS
    tiny = gemm_config("fp16", f16, f16, 16, 16, 1, "direct")
    assert (tiny.block_m, tiny.block_n) == TILES[-1]
    for precision in PRECISIONS:
        for dtype in (f32, f16, bf16, torch.float64):
            config = gemm_config(precision, dtype, dtype, 4096, 4096, 1, "direct")
            assert config.block_k == BLOCK_K[precision], "BLOCK_K follows the operand format only"
            stage_bytes = (config.block_m + config.block_n) * config.block_k * dtype.itemsize
            assert config.num_stages == 2 or stage_bytes * config.num_stages <= PIPELINE_BYTES, (precision, dtype)
            for m in (16, 160, 4096):  # BLOCK_K never follows the shape
                assert gemm_config(precision, dtype, f32, m, 1440, 4, "workspace").block_k == BLOCK_K[precision]
    # 128x256 only for tensor-core operands read in their own dtype and a plain-store epilogue
    assert gemm_config("fp32", f32, f32, 4096, 4096, 1, "direct").block_n == 128
    assert gemm_config("fp16", f32, f32, 4096, 4096, 1, "direct").block_n == 128
    assert gemm_config("bf16", f16, f16, 4096, 4096, 1, "direct").block_n == 128
    assert gemm_config("bf16", bf16, bf16, 4096, 4096, 8, "atomic").block_n == 128
    assert gemm_config("tf32", f32, f32, 4096, 4096, 1, "direct").block_n == 256


def triton_cdiv(x: int, y: int) -> int:
    return -(-x // y)


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("accumulate", ACCUMULATES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode", MODES)
def test_triton_agrees_with_float64_and_emulate(mode, precision, accumulate):
    generator = torch.Generator().manual_seed(11)
    a, b = random_operands(generator, 300, 1000, 200)
    reduction = Reduction(mode=mode, splits=1 if mode == "fixed" else 8, precision=precision, accumulate=accumulate)
    got = run(a.cuda(), b.cuda(), reduction, "triton").cpu()
    bound = error_bound(a, b, reduction, got.dtype)
    assert_within(got, a.double() @ b.double(), bound, f"triton vs float64 [{reduction.describe()}]")
    assert_within(got, run(a, b, reduction, "emulate"), 2 * bound, f"triton vs emulate [{reduction.describe()}]")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32))
@pytest.mark.parametrize("splits", (1, 4))
def test_triton_fixed_mode_is_bitwise_repeatable(dtype, splits):
    generator = torch.Generator().manual_seed(12)
    a, b = (x.cuda() for x in random_operands(generator, 513, 2049, 257, dtype))
    precision = DTYPE_FORMAT[dtype]
    reduction = Reduction(mode="fixed", splits=splits, precision=precision)
    first = run(a, b, reduction, "triton")
    for _ in range(3):
        assert_bitwise(run(a, b, reduction, "triton"), first, f"repeat {reduction.describe()}")


@pytest.mark.gpu
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_triton_splitk_reproducible_from_seed_and_sensitive_to_it(granularity):
    generator = torch.Generator().manual_seed(13)
    a, b = (x.cuda() for x in random_operands(generator, 256, 8192, 192, torch.float16))
    reduction = Reduction(mode="splitk", splits=8, seed=5, granularity=granularity, precision="fp16")
    first = run(a, b, reduction, "triton", call=4)
    assert_bitwise(run(a, b, reduction, "triton", call=4), first, "same seed and call")
    other_seed = Reduction(mode="splitk", splits=8, seed=6, granularity=granularity, precision="fp16")
    assert not torch.equal(run(a, b, other_seed, "triton", call=4), first), "another seed gave identical bits"
    assert not torch.equal(run(a, b, reduction, "triton", call=5), first), "the next call gave identical bits"


@pytest.mark.gpu
@pytest.mark.parametrize("accumulate", ACCUMULATES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_triton_splitk_order_is_emulates_order(granularity, accumulate):
    generator = torch.Generator().manual_seed(14)
    a, b = chunk_scaled_operands(generator, 300, 96, 260, 6, accumulate)
    reduction = Reduction(mode="splitk", splits=6, seed=9, granularity=granularity, accumulate=accumulate)
    got = run(a.cuda(), b.cuda(), reduction, "triton", call=2).cpu()
    assert_bitwise(got, run(a, b, reduction, "emulate", call=2), reduction.describe())


@pytest.mark.gpu
@pytest.mark.parametrize("accumulate", ACCUMULATES)
def test_triton_atomic_is_correct_on_exact_sums(accumulate):
    generator = torch.Generator().manual_seed(15)
    a, b = integer_operands(generator, 200, 64, 300)
    reduction = Reduction(mode="atomic", splits=16, accumulate=accumulate)
    got = run(a.cuda(), b.cuda(), reduction, "triton").cpu()
    assert_bitwise(got, (a.double() @ b.double()).float(), f"atomic {accumulate}")


@pytest.mark.gpu
@pytest.mark.parametrize("ordered", (False, True))
def test_ordered_sum_indexes_workspaces_past_2_to_the_31(ordered):
    """(S - 1) * M * N >= 2**31: chunk offsets must be computed in int64 (fp16 keeps it at 6 GiB)."""
    from kernels.order_triton import launch_ordered_sum

    splits, m, n = 3, 32768, 32768
    workspace = torch.empty(splits, m, n, dtype=torch.float16, device="cuda")
    for s in range(splits):
        workspace[s].fill_(2.0**s)
    out = torch.empty(m, n, dtype=torch.float32, device="cuda")
    launch_ordered_sum(workspace, out, ordered=ordered, key=7, granularity="element")
    assert torch.all(out == 7.0), f"{int((out != 7.0).sum())} elements are not 1 + 2 + 4"
