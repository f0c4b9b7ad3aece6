"""The accumulation-order reveal on hand-written reductions of known order, and on our kernels."""
import random

import numpy as np
import pytest
import torch

import kernels
from kernels.order import call_key, chunk_bounds, chunk_order, order_index
from probes.reveal import (
    Node,
    chain_operands,
    compact,
    kernel_reducer,
    planting,
    reveal,
    torch_sum_reducer,
)


def sequential_sum(a, b):
    """((t0 + t1) + t2) + ... in float32."""
    total = np.float32(0)
    for term in (a * b).astype(np.float32):
        total = np.float32(total + term)
    return total


def pairwise_sum(a, b):
    """Recursive halves in float32: (first half) + (second half)."""
    def add(terms):
        if len(terms) == 1:
            return terms[0]
        half = len(terms) // 2
        return np.float32(add(terms[:half]) + add(terms[half:]))

    return add((a * b).astype(np.float32))


def fused_groups_of_four(a, b):
    """Each group of 4 terms summed exactly (one fused addition), the group sums added in float32."""
    groups = (a * b).reshape(-1, 4).sum(axis=1).astype(np.float32)
    total = groups[0]
    for group in groups[1:]:
        total = np.float32(total + group)
    return total


def leaf(i):
    return Node((i,))


def sequential_tree(leaves):
    node = leaf(leaves[0])
    for i in leaves[1:]:
        node = Node.join([node, leaf(i)])
    return node


def pairwise_tree(leaves):
    if len(leaves) == 1:
        return leaf(leaves[0])
    half = len(leaves) // 2
    return Node.join([pairwise_tree(leaves[:half]), pairwise_tree(leaves[half:])])


@pytest.mark.parametrize("k", [2, 13, 32])
def test_reveals_a_sequential_sum(k):
    result = reveal(sequential_sum, k)
    assert result.consistent
    assert result.tree == sequential_tree(list(range(k))), compact(result.tree)
    if k >= 3:
        assert compact(result.tree) == f"(0..{k - 1})"


def test_reveals_a_pairwise_tree():
    result = reveal(pairwise_sum, 8)
    assert result.consistent
    assert compact(result.tree) == "(((0+1)+(2+3))+((4+5)+(6+7)))"
    odd = reveal(pairwise_sum, 11)
    assert odd.consistent and odd.tree == pairwise_tree(list(range(11))), compact(odd.tree)


def test_reveals_fused_multi_term_additions():
    result = reveal(fused_groups_of_four, 16)
    assert result.consistent
    assert compact(result.tree) == "({0+1+2+3}+{4+5+6+7}+{8+9+10+11}+{12+13+14+15})"


def test_an_order_that_changes_between_calls_is_reported_inconsistent():
    rng = random.Random(11)

    def shuffled_sum(a, b):
        terms = list((a * b).astype(np.float32))
        rng.shuffle(terms)
        total = np.float32(0)
        for term in terms:
            total = np.float32(total + term)
        return total

    # 66 calls, each with its own random order: no single tree explains them (a consistent
    # outcome would need every pair's meeting size to match one tree; probability < 1e-30)
    assert not reveal(shuffled_sum, 12).consistent


def test_planting_fits_the_formats():
    for operand, accumulate in [("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"), ("fp16", "fp32")]:
        plant = planting(64, operand, accumulate)
        a, b = plant.vectors(3, 9)
        terms = a * b
        assert terms[3] == -terms[9] == 2.0 ** plant.m_exp
        assert np.all(np.delete(terms, [3, 9]) == 2.0 ** plant.u_exp)
        # both factors representable in the operand format (no overflow, exact power of two)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[operand]
        for factor in (a, b):
            assert torch.equal(torch.from_numpy(factor).to(dtype).double(), torch.from_numpy(factor))
    with pytest.raises(ValueError, match="too long"):
        planting(5000, "fp16", "fp16")
    with pytest.raises(ValueError, match="operand"):
        planting(8, "int8")


def test_reveals_torch_sum_consistently():
    first = reveal(torch_sum_reducer(), 32, products=False)
    assert first.consistent
    assert sorted(first.tree.leaves) == list(range(32))
    assert reveal(torch_sum_reducer(), 32, products=False).tree == first.tree


def chunk_ids(tree, k, splits):
    """The chunk id of each operand of the tree's top-level chain of additions."""
    bounds = chunk_bounds(k, splits)
    ids = []
    for operand in chain_operands(tree):
        (chunk,) = [s for s, (lo, hi) in enumerate(bounds) if operand.leaves == tuple(range(lo, hi))]
        ids.append(chunk)
    return ids


@pytest.mark.parametrize("splits", [1, 4])
def test_fixed_mode_adds_chunks_in_index_order(splits):
    reduction = kernels.Reduction(mode="fixed", splits=splits)
    first = reveal(kernel_reducer(reduction, "emulate"), 16)
    assert first.consistent
    assert reveal(kernel_reducer(reduction, "emulate"), 16).tree == first.tree
    if splits > 1:
        assert chunk_ids(first.tree, 16, splits) == list(range(splits))


def test_splitk_chunk_order_is_what_kernels_order_predicts():
    k, splits = 8, 4  # chunks of two terms: 28 calls per reveal
    orders = set()
    for seed, call in [(0, 0), (0, 1), (7, 0), (7, 5), (123, 2)]:
        reduction = kernels.Reduction(mode="splitk", splits=splits, seed=seed)
        result = reveal(kernel_reducer(reduction, "emulate", call=call), k)
        assert result.consistent
        predicted = chunk_order(call_key(seed, call), order_index(1, 1, "element"), splits)[:, 0, 0].tolist()
        revealed = chunk_ids(result.tree, k, splits)
        # the first addition is commutative, so only its pair of chunks is visible
        assert set(revealed[:2]) == set(predicted[:2]) and revealed[2:] == predicted[2:], (seed, call, revealed)
        orders.add(tuple(revealed))
        again = reveal(kernel_reducer(reduction, "emulate", call=call), k)
        assert again.tree == result.tree, "the same seed and call must replay the same tree"
    assert len(orders) > 1, "splitk orders must change with the seed and call number"


def test_atomic_mode_on_emulate_is_not_one_tree():
    reduction = kernels.Reduction(mode="atomic", splits=4)
    # every one of the 120 calls draws its chunk order from OS entropy; one tree explaining all
    # of them has a probability far below 1e-20
    assert not reveal(kernel_reducer(reduction, "emulate"), 16).consistent


@pytest.mark.interpreter
@pytest.mark.slow
def test_interpreted_triton_kernel_adds_chunks_like_emulate():
    reduction = kernels.Reduction(mode="splitk", splits=2, seed=5)
    result = reveal(kernel_reducer(reduction, "interpret", call=3), 12)
    assert result.consistent
    emulated = reveal(kernel_reducer(reduction, "emulate", call=3), 12)
    assert chunk_ids(result.tree, 12, 2) == chunk_ids(emulated.tree, 12, 2)
