"""The emulate backend on the CPU: blocks of work, each element's order, and bits that do not
depend on the thread count or on how the work is cut into blocks."""
import json
import math
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels import conv_emulate, gemm_emulate, operands_emulate, order_cpu
from kernels.calls import counting
from kernels.order import call_key, chunk_order, order_index, permutation_table
from kernels.loops_cpu import COUNTING_SORT_MAX, MKL_GEMM, batched_matmul, compiled_permutation_table, piece_products
from kernels.order_cpu import BlockOrder, Placement, reduce_block
from kernels.reduction import Reduction
from kernels.workers_emulate import (INLINE_BLOCKS, SCRATCH_SHIFT_BYTES, one_thread, release_scratch, run_blocks,
                                     scratch, scratch_bytes, shaped, threads_to_workers)

ROOT = Path(__file__).resolve().parents[1]
MIXED_SCALES = torch.tensor([1.0, 1e8, -1e8, 3e-3, 7.0, 1e4, -2.5])  # a different order rounds differently


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.mark.parametrize("splits", [1, 2, 3, 8, 32, COUNTING_SORT_MAX + 1])
def test_compiled_permutation_table_is_the_definition(splits):
    for key in (0, 1, 0xDEADBEEF, 2**32 - 1):
        assert (compiled_permutation_table(key, splits) == permutation_table(key, splits).numpy()).all(), key


# ------------------------------------------------------------------ one block's order


def reference_sum(partials, key, granularity):
    """partials (splits, M, N) added in kernels.order's order for every element, in torch."""
    splits, m, n = partials.shape
    if key is None:
        ordered = partials
    else:
        order = chunk_order(key, order_index(m, n, granularity), splits)
        ordered = partials[order.view(-1)] if granularity == "call" else torch.gather(partials, 0, order)
    return gemm_emulate.sum_in_order(ordered)


def block_views(m, n):
    """(name, view of a (S, m, n) tensor as a block (S, A, B, C), Placement) for three layouts."""
    pixels = n // 10  # ten images of n // 10 pixels
    return [
        ("tile", lambda t: t[:, None, 10:50, 64:n], Placement((10, 0, 1, 0), (64, 0, 0, 1))),
        ("channel-image-pixel", lambda t: t[:, :, 3 * pixels:7 * pixels].reshape(-1, m, 4, pixels),
         Placement((0, 1, 0, 0), (3 * pixels, 0, pixels, 1))),
        ("image-channel-pixel", lambda t: t[:, :, 3 * pixels:7 * pixels].reshape(-1, m, 4, pixels).transpose(1, 2),
         Placement((0, 0, 1, 0), (3 * pixels, pixels, 0, 1))),
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("granularity", ["call", "tile", "element"])
@pytest.mark.parametrize("key", [None, 0x1234567])
def test_a_block_adds_each_element_in_its_order(generator, dtype, granularity, key):
    if key is None and granularity != "call":
        pytest.skip("fixed mode has one order")
    m, n, splits = 70, 130, 7
    partials = (torch.randn(splits, m, n, generator=generator, dtype=torch.float64) * MIXED_SCALES[:, None, None]).to(dtype)
    expected = reference_sum(partials, key, granularity)
    order = BlockOrder(splits, key, granularity, n)
    for name, view, place in block_views(m, n):
        block = view(partials)
        out = torch.empty(block.shape[1:], dtype=dtype)
        reduce_block(block, out, order, place)
        assert torch.equal(bits(out), bits(view(expected[None])[0])), name
    if key is not None and granularity != "call":
        other = torch.empty(m, n, dtype=dtype)
        reduce_block(partials[:, None], other[None], BlockOrder(splits, key + 1, granularity, n),
                     Placement((0, 0, 1, 0), (0, 0, 0, 1)))
        assert not torch.equal(other, expected), "another key must order (and round) some elements differently"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pixels", [3, 8, 11])
def test_an_output_of_any_layout_gets_the_same_bits(generator, dtype, pixels):
    """Lines shorter than the elements summed together go through a contiguous copy, longer ones
    are written in place, a contiguous output is summed as one line."""
    channels, images, splits = 6, 9, 7
    partials = (torch.randn(splits, channels, images, pixels, generator=generator, dtype=torch.float64)
                * MIXED_SCALES[:, None, None, None]).to(dtype)
    order = BlockOrder(splits, 0xBEEF, "element", images * pixels)
    place = Placement((0, 1, 0, 0), (0, 0, pixels, 1))
    contiguous = torch.empty(channels, images, pixels, dtype=dtype)
    transposed = torch.empty(images, channels, pixels, dtype=dtype).transpose(0, 1)
    for out in (contiguous, transposed):
        reduce_block(partials, out, order, place)
    expected = reference_sum(partials.reshape(splits, channels, -1), 0xBEEF, "element").view(contiguous.shape)
    assert torch.equal(bits(contiguous), bits(expected)) and torch.equal(bits(transposed), bits(expected))


def test_a_block_rounds_once_more_into_another_output_dtype(generator):
    partials = torch.randn(5, 1, 20, 30, generator=generator)
    order = BlockOrder(5, 99, "element", 30)
    wide, narrow = torch.empty(1, 20, 30), torch.empty(1, 20, 30, dtype=torch.float16)
    place = Placement((0, 0, 1, 0), (0, 0, 0, 1))
    reduce_block(partials, wide, order, place)
    reduce_block(partials, narrow, order, place)
    assert torch.equal(narrow, wide.half())


# ------------------------------------------------------------------ the tiled GEMM


REDUCTIONS = [
    Reduction(), Reduction("fixed", splits=5, accumulate="fp16"), Reduction("splitk", splits=7, seed=3),
    Reduction("splitk", splits=6, granularity="tile", accumulate="bf16"), Reduction("splitk", splits=3, granularity="call"),
    Reduction("splitk", splits=4, precision="fp16", accumulate="fp16"), Reduction("fixed", precision="fp64", accumulate="fp64"),
]


def reference_gemm(a, b, reduction, key):
    partials = gemm_emulate.chunk_partials(a, b, reduction)
    return reference_sum(partials, gemm_emulate.call_key(reduction, key), reduction.granularity)


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=lambda r: r.describe())
def test_tiled_gemm_is_the_reference_order_bit_for_bit(generator, monkeypatch, reduction):
    """Integer-valued operands make every chunk partial exact, so only the order between chunks
    rounds; small tiles make the output many tiles, ragged at the edges."""
    monkeypatch.setattr(gemm_emulate, "TILE_MIN_PRODUCTS", 1)
    monkeypatch.setattr(gemm_emulate, "TILE_ROWS", 24)
    monkeypatch.setattr(gemm_emulate, "TILE_COLS", 40)
    m, k, n = 70, 96, 130
    a = torch.randint(-4, 5, (m, k), generator=generator).float() * 2.0 ** torch.randint(-6, 7, (m, 1), generator=generator)
    b = torch.randint(-4, 5, (k, n), generator=generator).float() * 2.0 ** torch.randint(-6, 7, (1, n), generator=generator)
    assert len(gemm_emulate.output_tiles(m, n, k, reduction.splits)) >= 12
    got = gemm_emulate.gemm(a, b, reduction, 0xC0FFEE, torch.float32)
    expected = reference_gemm(a, b, reduction, 0xC0FFEE).float()
    assert torch.equal(bits(got), bits(expected)), f"{int((got != expected).sum())} elements differ"


def test_tiles_cover_the_output_once():
    for m, n, k, stored in [(1, 1, 1, 1), (1024, 1024, 1024, 1), (160, 1440, 8192, 8), (16, 4096, 144, 32), (7, 3, 10**6, 1)]:
        covered = torch.zeros(m, n, dtype=torch.int32)
        for r0, r1, c0, c1 in gemm_emulate.output_tiles(m, n, k, stored):
            covered[r0:r1, c0:c1] += 1
        assert bool((covered == 1).all()), (m, n, k, stored)


# ------------------------------------------------------------------ convolution roles


def spec_operands(role, x, w, gy, stride, padding):
    """(A, B) of a role's GEMM as kernels.conv specifies it, built with F.unfold."""
    (batch, c_in, h, width), (c_out, _, kh, kw) = x.shape, w.shape
    if role == "forward":
        cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (N, K, L)
        return w.reshape(c_out, -1), cols.transpose(0, 1).reshape(c_in * kh * kw, -1)
    if role == "weight_grad":
        cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)
        return gy.transpose(0, 1).reshape(c_out, -1), cols.transpose(1, 2).reshape(-1, c_in * kh * kw)
    spread = torch.zeros(batch, c_out, (gy.shape[2] - 1) * stride + 1, (gy.shape[3] - 1) * stride + 1)
    spread[:, :, ::stride, ::stride] = gy
    top, left = kh - 1 - padding, kw - 1 - padding
    framed = F.pad(spread, (left, width + kw - 1 - spread.shape[3] - left, top, h + kh - 1 - spread.shape[2] - top))
    taps = F.unfold(framed, (kh, kw)).view(batch, c_out, kh, kw, h * width).flip(2, 3)
    return w.transpose(0, 1).reshape(c_in, -1), taps.reshape(batch, -1, h * width).transpose(0, 1).reshape(c_out * kh * kw, -1)


def spec_role(role, x, w, gy, stride, padding, reduction, call):
    a, b = spec_operands(role, x, w, gy, stride, padding)
    key = call_key(reduction.seed, call) if reduction.seeded else 0
    c = gemm_emulate.gemm(a, b, reduction, key, torch.float32)
    if role == "weight_grad":
        return c.view(w.shape)
    size = gy.shape[2:] if role == "forward" else x.shape[2:]
    return c.view(c.shape[0], x.shape[0], *size).transpose(0, 1)


def emulated_roles(x, w, gy, stride, padding, reduction):
    with counting():
        y = conv_emulate.forward(x, w, (stride, stride), (padding, padding), reduction, torch.float32)
        gx, gw = conv_emulate.gradients(x, w, gy, (stride, stride), (padding, padding), reduction, reduction)
    return {"forward": y, "input_grad": gx, "weight_grad": gw}


@pytest.mark.parametrize("reduction", [Reduction("fixed"), Reduction("splitk", splits=8, seed=3),
                                       Reduction("splitk", splits=32, seed=3, granularity="tile")],
                         ids=lambda r: r.describe())
def test_a_roles_work_run_by_hand_gives_the_bits_of_its_call(generator, reduction):
    """role_work's blocks, then its finish, run on this thread give each role's result bit for bit:
    the work that probes.timing's floors time is the role's whole work. The quick net's stage 1,
    whose split-K roles run in two blocks or more."""
    x, w, gy = (torch.randn(*shape, generator=generator) for shape in ((64, 16, 8, 8), (16, 16, 3, 3), (64, 16, 8, 8)))
    calls = {"forward": lambda: conv_emulate.forward(x, w, (1, 1), (1, 1), reduction, torch.float32),
             "input_grad": lambda: conv_emulate.input_grad(gy, w, (8, 8), (1, 1), (1, 1), reduction, torch.float32),
             "weight_grad": lambda: conv_emulate.weight_grad(x, gy, (3, 3), (1, 1), (1, 1), reduction, torch.float32)}
    for role, call in calls.items():
        with counting():
            expected = call()
        with counting(), one_thread():
            work = conv_emulate.role_work(role, x, w, gy, (1, 1), (1, 1), reduction)
            for block in work.blocks:
                block()
            result = work.finish()
        assert len(work.blocks) >= 2 or reduction.splits == 1, role
        assert torch.equal(bits(result), bits(expected)), role


CONV_CONFIGS = [(9, 8, 12, 7, 3, 1, 1), (7, 6, 5, 9, 3, 2, 1), (6, 10, 16, 7, 1, 2, 0), (5, 4, 6, 11, 5, 2, 2),
                (2, 3, 24, 3, 3, 1, 1)]  # the last: a weight gradient whose chunk partials outweigh its operand
CONV_REDUCTIONS = REDUCTIONS + [Reduction("splitk", splits=4, granularity="element", accumulate="bf16", seed=8),
                                Reduction("fixed", splits=1, precision="bf16")]


@pytest.mark.parametrize("reduction", CONV_REDUCTIONS, ids=lambda r: r.describe())
@pytest.mark.parametrize("config", CONV_CONFIGS, ids=lambda c: "n{}-{}to{}-{}x{}-k{}s{}p{}".format(c[0], c[1], c[2], c[3], c[3], *c[4:]))
def test_every_role_is_its_specified_gemm_bit_for_bit(generator, monkeypatch, config, reduction):
    assert_roles_are_the_spec(generator, monkeypatch, config, reduction)


@pytest.mark.parametrize("c_out,torch_forms_it", [(24, False), (8, True)])
def test_the_one_chunk_weight_gradient_is_torchs_convolution_only_below_its_operands_size(
        generator, monkeypatch, c_out, torch_forms_it):
    """K is 2 images x 9 pixels = 18: 24 output channels outweigh it, 8 do not."""
    calls = []
    conv2d_weight = torch.nn.grad.conv2d_weight
    monkeypatch.setattr(torch.nn.grad, "conv2d_weight", lambda *args: calls.append(1) or conv2d_weight(*args))
    x, w, gy = (torch.randn(shape, generator=generator) for shape in ((2, 3, 3, 3), (c_out, 3, 3, 3), (2, c_out, 3, 3)))
    gw = emulated_roles(x, w, gy, 1, 1, Reduction("fixed", splits=1))["weight_grad"]
    assert bool(calls) == torch_forms_it
    expected = torch.nn.grad.conv2d_weight(x.double(), w.shape, gy.double(), 1, 1)
    # 18 fp32 products per element, each sum off by at most 18 roundings of 2**-24 of the terms' sizes
    assert (gw.double() - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("reduction", [Reduction("splitk", splits=7, seed=3),
                                       Reduction("splitk", splits=4, granularity="element", accumulate="bf16", seed=8),
                                       Reduction("fixed", splits=5)], ids=lambda r: r.describe())
@pytest.mark.parametrize("config", CONV_CONFIGS[:3], ids=lambda c: "n{}-{}to{}-{}x{}-k{}s{}p{}".format(c[0], c[1], c[2], c[3], c[3], *c[4:]))
def test_gapped_partials_in_scratch_memory_give_the_same_bits(generator, monkeypatch, config, reduction):
    """Every partials buffer made wide: planes a gap apart, in each worker's scratch memory."""
    monkeypatch.setattr(order_cpu, "GAP_SPLITS", 1)
    monkeypatch.setattr(order_cpu, "GAP_PLANE", 1)
    assert_roles_are_the_spec(generator, monkeypatch, config, reduction)


def assert_roles_are_the_spec(generator, monkeypatch, config, reduction):
    """Integer-valued tensors (exact chunk partials), with tiny blocks so that every role is cut
    into several runs of images, the weight gradient's chunks into pieces and its sum into
    several row blocks; call numbers forward 0, input_grad 1, weight_grad 2."""
    monkeypatch.setattr(conv_emulate, "CONV_RUN_PRODUCTS", 1)
    monkeypatch.setattr(conv_emulate, "CONV_MAX_RUNS", 3)
    monkeypatch.setattr(conv_emulate, "GEMM_RUN_PRODUCTS", 3000)
    monkeypatch.setattr(conv_emulate, "CACHE_BYTES", 2000)
    monkeypatch.setattr(conv_emulate, "SUM_ELEMENTS", 16)
    batch, c_in, c_out, size, kernel, stride, padding = config
    x = torch.randint(-3, 4, (batch, c_in, size, size), generator=generator).float()
    w = torch.randint(-3, 4, (c_out, c_in, kernel, kernel), generator=generator).float()
    out_size = (size + 2 * padding - kernel) // stride + 1
    gy = torch.randint(-3, 4, (batch, c_out, out_size, out_size), generator=generator).float()
    got = emulated_roles(x, w, gy, stride, padding, reduction)
    for call, role in enumerate(("forward", "input_grad", "weight_grad")):
        expected = spec_role(role, x, w, gy, stride, padding, reduction, call)
        assert torch.equal(bits(got[role]), bits(expected.contiguous())), f"{role}: {int((got[role] != expected).sum())} differ"


@pytest.mark.parametrize("reduction", [Reduction("splitk", splits=4, seed=3),
                                       Reduction("splitk", splits=3, seed=5, accumulate="bf16")], ids=lambda r: r.describe())
def test_the_compiled_loops_give_the_same_bits_with_wide_indices(generator, monkeypatch, reduction):
    """The gathers and ordered sums index with uint32 where the indices fit, else with uint64."""
    x, w, gy = (torch.randn(shape, generator=generator) for shape in ((3, 5, 9, 9), (6, 5, 3, 3), (3, 6, 9, 9)))
    narrow = emulated_roles(x, w, gy, 1, 1, reduction)
    widths = set()

    def spying(kernel, index_argument):
        def spy(*args):
            widths.add(args[index_argument].dtype)
            return kernel(*args)
        return spy

    monkeypatch.setattr(order_cpu, "NARROW_INDEX_LIMIT", 0)
    monkeypatch.setattr(operands_emulate, "gather_taps", spying(operands_emulate.gather_taps, 1))
    monkeypatch.setattr(conv_emulate, "products_in_order", spying(conv_emulate.products_in_order, 1))
    for name in ("sum_block_in_order", "gather_block_in_order"):
        monkeypatch.setattr(order_cpu, name, spying(getattr(order_cpu, name), 1))
    operands_emulate._cached_tap_index.cache_clear()
    try:
        wide = emulated_roles(x, w, gy, 1, 1, reduction)
    finally:
        operands_emulate._cached_tap_index.cache_clear()
    assert widths == {np.dtype(np.uint64)}, widths
    for role in narrow:
        assert torch.equal(bits(wide[role]), bits(narrow[role])), role


@pytest.mark.parametrize("poisoned", ["w", "gy"])
def test_non_finite_operands_meet_the_padding_as_the_gemm_does(generator, poisoned):
    """0 * inf is NaN in the specified GEMM (padding and inserted zeros are multiplied), which
    torch's own convolution skips: such calls must not take torch's path."""
    x = torch.randint(-3, 4, (4, 3, 6, 6), generator=generator).float()
    w = torch.randint(-3, 4, (5, 3, 3, 3), generator=generator).float()
    gy = torch.randint(-3, 4, (4, 5, 3, 3), generator=generator).float()
    (w if poisoned == "w" else gy)[0, 0, 0, 0] = math.inf
    got = emulated_roles(x, w, gy, 2, 1, Reduction())
    for call, role in enumerate(("forward", "input_grad", "weight_grad")):
        expected = spec_role(role, x, w, gy, 2, 1, Reduction(), call)
        assert torch.equal(got[role].isnan(), expected.isnan()) and torch.equal(got[role].isinf(), expected.isinf()), role
    assert bool(got["forward" if poisoned == "w" else "weight_grad"].isnan().any()), "the test must reach a NaN"


def test_torch_reduced_precision_settings_do_not_reach_the_emulation(generator):
    """torch.set_float32_matmul_precision("medium") makes torch's CPU matmul round fp32 operands
    to bf16; the emulated GEMM and convolutions keep summing IEEE fp32 products."""
    a, b = torch.randn(64, 300, generator=generator), torch.randn(300, 80, generator=generator)
    x, w = torch.randn(4, 6, 9, 9, generator=generator), torch.randn(5, 6, 3, 3, generator=generator)
    gy = torch.randn(4, 5, 9, 9, generator=generator)

    def results():
        fixed = Reduction()
        return [gemm_emulate.gemm(a, b, fixed, 0, torch.float32),
                *emulated_roles(x, w, gy, 1, 1, fixed).values(), *emulated_roles(x, w, gy, 1, 1, REDUCTIONS[2]).values()]

    expected = results()
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert (a @ b - expected[0]).abs().max() > 1e-3, "torch's own matmul must round to bf16 here"
        assert all(torch.equal(got, want) for got, want in zip(results(), expected))
    finally:
        torch.set_float32_matmul_precision(saved)


# ------------------------------------------------------------------ threads


THREAD_PROBE = """
import hashlib, json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from kernels import Policy, Reduction, conv2d, counting, matmul
from nets.workloads import TrainingSetup, train
digests = {}
g = torch.Generator().manual_seed(5)
a, b = torch.randn(64, 4096, generator=g), torch.randn(4096, 144, generator=g)
c, d = torch.randn(300, 700, generator=g), torch.randn(700, 900, generator=g)
x, w = torch.randn(64, 16, 8, 8, generator=g), torch.randn(32, 16, 3, 3, generator=g)
reductions = {"fixed": Reduction(), "fixed5": Reduction("fixed", splits=5), "element": Reduction("splitk", splits=8),
              "tile": Reduction("splitk", splits=8, granularity="tile"), "call": Reduction("splitk", splits=3, granularity="call"),
              "bf16": Reduction("splitk", splits=32, accumulate="bf16")}
for name, r in reductions.items():
    with counting():
        results = [matmul(a, b, r), matmul(c, d, r)]
        for stride in (1, 2):
            xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = conv2d(xi, wi, None, stride, 1, policy=r)
            y.backward(torch.ones_like(y) / 3)
            results += [y, xi.grad, wi.grad]
    if name in ("fixed", "element"):  # three SGD steps of the quick preset's ConstNet-10-1
        setup = TrainingSetup(net_options=(("depth", 10), ("widen", 1), ("init", "zero")), batch=64, in_channels=1)
        results += list(train(setup, Policy.uniform(r))["states"][-1].values())
    digests[name] = hashlib.sha1(b"".join(t.detach().numpy().tobytes() for t in results)).hexdigest()
print(json.dumps(digests))
"""


@pytest.mark.slow
def test_bits_do_not_depend_on_the_thread_count():
    """matmul, conv2d (every role, fixed and splitk) and three training steps of the quick
    preset's network on 1, 2 and 4 threads, in fresh processes."""
    results = {}
    for threads in (1, 2, 4):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        run = subprocess.run([sys.executable, "-c", THREAD_PROBE, str(threads)], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        results[threads] = json.loads(run.stdout.strip().splitlines()[-1])
    assert results[1] == results[2] == results[4], results


@pytest.mark.parametrize("count", [1, INLINE_BLOCKS + 1], ids=["in the caller", "on the workers"])
def test_workers_leave_the_callers_thread_setting_alone(count):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = []
        run_blocks([lambda: seen.append(torch.get_num_threads()) for _ in range(count)])
        assert seen == [1] * count, "every block runs torch on one thread"
        assert torch.get_num_threads() == 2
        later = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [2], "threads started afterwards get the caller's setting as before"
    finally:
        torch.set_num_threads(threads)


def test_threads_to_workers_hands_torchs_threads_to_the_workers():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with threads_to_workers():
            assert torch.get_num_threads() == 1, "torch runs on one thread in the caller"
            together = threading.Barrier(2)
            names = []
            # both blocks must be running at once to pass the barrier: two workers, not one
            run_blocks([lambda: names.append((together.wait(10), threading.current_thread().name)[1])] * 2)
            assert len(set(names)) == 2
            with threads_to_workers():
                assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2, "the caller's setting comes back"
    finally:
        torch.set_num_threads(threads)


def test_an_error_in_a_block_is_raised_in_the_caller():
    threads = torch.get_num_threads()
    done = []

    def fail():
        raise ValueError("block 1 failed")

    try:
        torch.set_num_threads(2)
        with pytest.raises(ValueError, match="block 1 failed"):
            run_blocks([lambda: done.append(0), fail, lambda: done.append(2)])
    finally:
        torch.set_num_threads(threads)


def test_scratch_memory_is_each_threads_own_and_kept():
    def address(array):
        return array.__array_interface__["data"][0]

    first = scratch(1000)
    assert first.dtype == np.uint8 and first.size == 1000
    assert address(scratch(500)) == address(first), "a smaller request reuses the memory"
    assert scratch_bytes() >= 1000
    larger = scratch(1 << 20)
    assert larger.size == 1 << 20 and address(scratch(10)) == address(larger), "a larger one replaces it"
    assert (address(larger) - SCRATCH_SHIFT_BYTES) % 64 == 0, "it starts on a cache line"
    other = []
    thread = threading.Thread(target=lambda: other.append(address(scratch(1000))))
    thread.start()
    thread.join()
    assert other[0] != address(larger), "another thread has its own"
    release_scratch()
    assert scratch_bytes() == 0


def test_a_block_lets_the_gil_go_only_for_its_heavy_calls():
    """A split-K forward block of the quick net's stage 2 keeps the GIL between its gather, batched
    matmul and ordered sum. A thread spinning in Python keeps the GIL for up to a switch interval
    each time the block lets it go, so the block's time counts its waits: 5-14 intervals here,
    26-38 when its tensors were shaped by torch (about 20 releases). The least of three runs,
    as the machine's load only adds to it."""
    x, w = torch.randn(32, 32, 4, 4), torch.randn(32, 32, 3, 3)
    with threads_to_workers():
        (block,) = conv_emulate.role_work("forward", x, w, None, (1, 1), (1, 1),
                                          Reduction("splitk", splits=8, seed=1)).blocks
    block()  # compiles or loads the compiled loops
    interval, stop, spinning = sys.getswitchinterval(), threading.Event(), threading.Event()

    def spin():
        spinning.set()
        while not stop.is_set():
            sum(range(100))

    spinner = threading.Thread(target=spin)
    sys.setswitchinterval(0.05)
    spinner.start()
    spinning.wait()
    try:
        waits = []
        for _ in range(3):
            start = time.perf_counter()
            block()
            waits.append((time.perf_counter() - start) / 0.05)
    finally:
        stop.set()
        spinner.join()
        sys.setswitchinterval(interval)
    assert min(waits) < 16, f"the block waited for the GIL about {min(waits):.0f} switch intervals"


def test_shaped_tensors_are_numpys_views():
    base = torch.empty(4, 6)
    view = shaped(base, (2, 2, 6))
    assert view.data_ptr() == base.data_ptr() and view.shape == (2, 2, 6)
    columns = shaped(base[:, :3], (2, 2, 3))  # rows 6 apart, three contiguous: still a view
    assert columns.data_ptr() == base.data_ptr() and columns.stride() == (12, 6, 1)


needs_mkl = pytest.mark.skipif(not MKL_GEMM, reason="torch's library exports no MKL SGEMM and SGEMM_BATCH")


@needs_mkl
@pytest.mark.parametrize("splits,rows,inner,cols", [(8, 16, 18, 2048), (8, 64, 72, 128), (32, 64, 18, 256),
                                                    (8, 32, 2, 1024), (33, 5, 7, 4096)])
def test_the_compiled_matmul_is_torchs_bmm_bit_for_bit(generator, splits, rows, inner, cols):
    """Into fresh partials and into gapped ones (more than GAP_SPLITS chunks of GAP_PLANE elements
    or more), a left operand with rows apart (a view of padded chunks, as the roles pass it)."""
    left = torch.randn(rows, splits * inner, generator=generator).view(rows, splits, inner).transpose(0, 1)
    right = torch.randn(splits, inner, cols, generator=generator)
    partials = order_cpu.partials_arrays(splits, (rows, cols), torch.float32)
    batched_matmul(left.numpy(), right.numpy(), partials.planes)
    assert torch.equal(torch.from_numpy(partials.planes), torch.bmm(left, right))
    assert order_cpu.compiled_matmul_applies(left, cols)


@needs_mkl
def test_the_compiled_matmul_is_not_used_where_torch_multiplies_otherwise(generator):
    """torch.bmm forms tiny products with loops of its own (other bits), and the compiled call
    takes left operands with unit column strides only."""
    tiny = torch.randn(8, 3, 2, generator=generator)
    assert not order_cpu.compiled_matmul_applies(tiny, 5)
    by_columns = torch.randn(8, 72, 64, generator=generator).transpose(1, 2)
    assert not order_cpu.compiled_matmul_applies(by_columns, 128)


@needs_mkl
@pytest.mark.parametrize("reduction", [Reduction("splitk", splits=8, seed=2), Reduction("splitk", splits=32, seed=3),
                                       Reduction("splitk", splits=8, seed=4, granularity="tile")],
                         ids=lambda r: r.describe())
@pytest.mark.parametrize("shape,kernel,stride", [((64, 16, 8, 8), 3, 1), ((64, 32, 4, 4), 3, 2), ((64, 16, 8, 8), 1, 2)])
def test_a_block_in_one_call_gives_the_bits_of_its_three(generator, monkeypatch, reduction, shape, kernel, stride):
    """A split-K forward or input-gradient block gathers, multiplies and adds in one compiled call
    where it can (the quick net's layers); the same bits as its three calls one after another."""
    x = torch.randn(shape, generator=generator)
    w = torch.randn(2 * shape[1], shape[1], kernel, kernel, generator=generator)
    padding = kernel // 2
    gy = torch.randn(shape[0], 2 * shape[1], *[(n + 2 * padding - kernel) // stride + 1 for n in shape[2:]],
                     generator=generator)
    calls = []
    one_call = conv_emulate.products_in_order
    monkeypatch.setattr(conv_emulate, "products_in_order", lambda *args: (calls.append(1), one_call(*args)))
    fused = emulated_roles(x, w, gy, stride, padding, reduction)
    assert calls, "no block ran in one call"
    monkeypatch.setattr(conv_emulate, "compiled_matmul_applies", lambda *args: False)
    separate = emulated_roles(x, w, gy, stride, padding, reduction)
    for role in ("forward", "input_grad"):
        assert torch.equal(bits(fused[role]), bits(separate[role])), role


@needs_mkl
@pytest.mark.parametrize("cout,n,k,cols,run_pieces", [
    (16, 144, 4096, 2048, [(0, 0, 512), (512, 512, 512), (1024, 1024, 512), (1536, 1536, 512)]),
    (64, 576, 256, 128, [(128, 0, 32), (160, 32, 32), (192, 64, 32), (224, 96, 32)]),
    (16, 9, 4096, 2048, [(2048, 0, 293), (2341, 293, 585), (2926, 878, 1170)]),  # uneven and cut chunks
    (32, 288, 1024, 512, [(512, 0, 1), (513, 1, 511)])])
def test_the_compiled_pieces_are_torchs_mm_bit_for_bit(generator, cout, n, k, cols, run_pieces):
    """A weight-gradient run's pieces (K column, the run's column, length), each products[i] =
    patches[:, b:b + length] @ grads[:, a:a + length]^T, as torch.mm forms them."""
    patches, grads = torch.randn(n, cols, generator=generator), torch.randn(cout, k, generator=generator)
    products = torch.empty(len(run_pieces), n, cout)
    piece_products(patches.numpy(), grads.numpy(), np.array(run_pieces, dtype=np.int64), products.numpy())
    for i, (at, start, length) in enumerate(run_pieces):
        assert torch.equal(products[i], torch.mm(patches[:, start:start + length], grads[:, at:at + length].t())), i
    assert conv_emulate._pieces_in_one_call(cout, n, k, cols, np.array(run_pieces, dtype=np.int64))


@needs_mkl
@pytest.mark.parametrize("reduction", [Reduction("splitk", splits=8, seed=2), Reduction("splitk", splits=7, seed=3),
                                       Reduction("splitk", splits=32, seed=4, granularity="tile")],
                         ids=lambda r: r.describe())
@pytest.mark.parametrize("shape,kernel,stride", [((64, 16, 8, 8), 3, 1), ((64, 32, 4, 4), 3, 2), ((64, 1, 8, 8), 3, 1)])
def test_a_weight_gradient_block_in_one_call_gives_the_bits_of_its_calls(generator, monkeypatch, reduction, shape,
                                                                          kernel, stride):
    """A split-K weight-gradient run gathers its patches and multiplies its pieces in one compiled
    call where it can (the quick net's layers); the same bits as the gather and torch.mm calls."""
    x = torch.randn(shape, generator=generator)
    w = torch.randn(16, shape[1], kernel, kernel, generator=generator)
    padding = kernel // 2
    gy = torch.randn(shape[0], 16, *[(n + 2 * padding - kernel) // stride + 1 for n in shape[2:]], generator=generator)
    calls = []
    one_call = conv_emulate.patch_products
    monkeypatch.setattr(conv_emulate, "patch_products", lambda *args: (calls.append(1), one_call(*args)))
    fused = emulated_roles(x, w, gy, stride, padding, reduction)["weight_grad"]
    assert calls, "no block ran in one call"
    monkeypatch.setattr(conv_emulate, "_pieces_in_one_call", lambda *args: False)
    separate = emulated_roles(x, w, gy, stride, padding, reduction)["weight_grad"]
    assert torch.equal(bits(fused), bits(separate))


def test_partials_buffers_are_gapped_only_when_wide():
    narrow = order_cpu.partials_buffer(order_cpu.GAP_SPLITS, (64, order_cpu.GAP_PLANE), torch.float32, within_block=True)
    assert narrow.is_contiguous()
    wide = order_cpu.partials_buffer(order_cpu.GAP_SPLITS + 1, (64, order_cpu.GAP_PLANE), torch.float32)
    assert wide.stride(0) == 64 * order_cpu.GAP_PLANE + order_cpu.PLANE_GAP_BYTES // 4 and wide[0].is_contiguous()
    in_scratch = order_cpu.partials_buffer(order_cpu.GAP_SPLITS + 1, (4, order_cpu.GAP_PLANE), torch.float32,
                                           within_block=True)
    assert in_scratch.data_ptr() == scratch(4).__array_interface__["data"][0]
    left, right = torch.randn(9, 3, 2), torch.randn(9, 2, order_cpu.GAP_PLANE)
    products = order_cpu.batched_partials(left, right)
    assert products.stride(0) > 3 * order_cpu.GAP_PLANE and torch.equal(products, torch.bmm(left, right))


def _matmul_in_child(queue):
    # Small tensors only: torch's OpenMP pool, used by the parent, cannot run in a forked child.
    out = gemm_emulate.gemm(torch.ones(40, 50), torch.ones(50, 30), Reduction(), 0, torch.float32)
    queue.put(out.tolist())


def test_a_forked_child_runs_blocks_of_its_own():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_blocks([lambda: None] * (INLINE_BLOCKS + 1))  # the parent's workers exist
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_matmul_in_child, args=(queue,))
        child.start()
        child.join(120)
        assert child.exitcode == 0 and queue.get(timeout=5) == [[50.0] * 30] * 40
    finally:
        torch.set_num_threads(threads)
