"""kernels.function_policy_mode: F.conv2d / F.linear / the matmul family and attention routed, the
rest counted, the backward without a mode (its run under tools/run.py: tests/test_intercept_run.py)."""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from kernels import ROLES, Reduction, counting, function_policy_mode, matmul


def _functional_net(x, w1, w2, w3):
    """Functional calls and torch.bmm only: a conv, a batched product, a linear map."""
    h = F.relu(F.conv2d(x, w1, padding=1))  # (N, 4, 6, 6)
    rows = h.flatten(2)  # (N, 4, 36)
    mixed = torch.bmm(rows, rows.transpose(1, 2)) / 36  # (N, 4, 4)
    return F.linear(mixed.flatten(1) @ w2, w3)


def _train(reduction, steps=3):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 6, 6, generator=generator)
    labels = torch.randint(0, 5, (8,), generator=generator)
    weights = [torch.randn(shape, generator=generator).mul_(0.3).requires_grad_()
               for shape in [(4, 3, 3, 3), (16, 12), (5, 12)]]
    with counting(), function_policy_mode(reduction, backend="emulate") as mode:
        for _ in range(steps):
            loss = F.cross_entropy(_functional_net(x, *weights), labels)
            grads = torch.autograd.grad(loss, weights)
            with torch.no_grad():
                for w, g in zip(weights, grads):
                    w -= 0.1 * g
    return [w.detach() for w in weights], mode.report


def test_a_functional_model_trains_reproducibly_with_every_reduction_controlled():
    fixed, report = _train(Reduction("fixed"))
    again, _ = _train(Reduction("fixed"))
    assert all(torch.equal(a, b) for a, b in zip(fixed, again))
    seeded = [_train(Reduction("splitk", splits=4, seed=seed))[0] for seed in (1, 1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(seeded[0], seeded[1]))
    assert not all(torch.equal(a, b) for a, b in zip(seeded[0], seeded[2]))
    assert report.share == 1.0
    ops = {(row["op"], row["role"]) for row in report.rows()}
    assert {("conv2d", "weight_grad"), ("bmm", "forward"), ("bmm", "input_grad"), ("matmul", "forward"),
            ("linear", "weight_grad")} <= ops
    assert ("conv2d", "input_grad") not in ops  # the input needs no gradient


def test_the_forward_matches_torch_within_float_rounding():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 6, generator=generator)
    weights = [torch.randn(shape, generator=generator) for shape in [(4, 3, 3, 3), (16, 12), (5, 12)]]
    with function_policy_mode(Reduction("splitk", splits=3), backend="emulate"):
        ours = _functional_net(x, *weights)
    assert torch.allclose(ours, _functional_net(x, *weights), rtol=1e-5, atol=1e-5)


def test_what_it_cannot_run_falls_through_and_is_counted():
    x, w = torch.randn(2, 4, 5, 5), torch.randn(4, 2, 3, 3)
    with function_policy_mode(backend="emulate") as mode:
        grouped = F.conv2d(x, w, groups=2)
        scaled = torch.addmm(torch.zeros(3, 3), torch.ones(3, 2), torch.ones(2, 3), beta=0.5)
        vector = torch.matmul(torch.ones(3), torch.ones(3, 2))
        summed = torch.einsum("ij,jk->ik", torch.ones(2, 3), torch.ones(3, 2))
        grouped_query = F.scaled_dot_product_attention(*[torch.ones(1, 2, 2, 4)] * 3, enable_gqa=True)
    assert torch.equal(grouped, F.conv2d(x, w, groups=2)) and torch.equal(scaled, torch.full((3, 3), 2.0))
    assert torch.equal(vector, torch.full((2,), 3.0)) and torch.equal(summed, torch.full((2, 2), 3.0))
    assert torch.equal(grouped_query, torch.ones(1, 2, 2, 4))
    below = "its GEMMs run out of this mode's sight (kernels.policy_mode routes them)"
    reasons = {(row["op"], why) for row in mode.report.rows() for why in row["why_native"]}
    assert reasons == {("conv2d", "groups=2"), ("addmm", "beta or alpha other than 1"), ("matmul", "1-D @ 2-D"),
                       ("einsum", below), ("scaled_dot_product_attention", "enable_gqa")}
    assert mode.report.share == 0.0


def test_a_transformer_has_every_reduction_routed_attention_included():
    from nets import build

    torch.manual_seed(0)
    net = build("transformer", in_channels=1, num_classes=10, depth=1, width=16)
    images = torch.randn(4, 1, 8, 8)
    with function_policy_mode(Reduction("splitk", splits=2, seed=1), backend="emulate") as mode:
        ours = net(images)
        ours.sum().backward()
    assert torch.allclose(ours, net(images), rtol=1e-5, atol=1e-6)
    assert mode.report.share == 1.0
    assert {(op, role) for op in ("linear", "multi_head_attention_forward") for role in ROLES} <= set(
        mode.report.controlled)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("self_attention", [True, False], ids=["self", "cross"])
def test_multi_head_attention_matches_torch(need_weights, self_attention):
    torch.manual_seed(1)
    attention = torch.nn.MultiheadAttention(8, 2, dropout=0.0, batch_first=True)
    query = torch.randn(3, 5, 8, requires_grad=True)
    source = query if self_attention else torch.randn(3, 6, 8)
    expected = attention(query, source, source, need_weights=need_weights)
    with function_policy_mode(Reduction("splitk", splits=2, seed=4), backend="emulate") as mode:
        got = attention(query, source, source, need_weights=need_weights)
    assert torch.allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    assert (got[1] is None) == (not need_weights)
    if need_weights:
        assert torch.allclose(got[1], expected[1], rtol=1e-5, atol=1e-6)
    (ours,) = torch.autograd.grad(got[0].sum(), query)
    (theirs,) = torch.autograd.grad(expected[0].sum(), query)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert mode.report.share == 1.0


@pytest.mark.parametrize("options", [{}, {"is_causal": True}, {"scale": 0.3}, {"dropout_p": 0.0},
                                     {"attn_mask": "bool"}, {"attn_mask": "float"}],
                         ids=["plain", "causal", "scale", "no-dropout", "bool-mask", "float-mask"])
def test_scaled_dot_product_attention_matches_torch(options):
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, length, width, generator=generator) for length, width in ((5, 4), (7, 4), (7, 6)))
    masks = {"bool": torch.rand(5, 7, generator=generator) > 0.3, "float": torch.randn(5, 7, generator=generator)}
    options = {key: masks[value] if key == "attn_mask" else value for key, value in options.items()}
    with function_policy_mode(Reduction("fixed", splits=2), backend="emulate") as mode:
        got = F.scaled_dot_product_attention(q, k, v, **options)
    assert torch.allclose(got, F.scaled_dot_product_attention(q, k, v, **options), rtol=1e-5, atol=1e-6)
    assert mode.report.controlled[("scaled_dot_product_attention", "forward")] == 2  # the scores, the values


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_a_row_with_nothing_to_attend_to_gives_torchs_zeros(mask_kind):
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 4, 8, generator=generator) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False
    if mask_kind == "additive":
        mask = torch.zeros(4, 4).masked_fill(~mask, float("-inf"))
    results = []
    for context in (function_policy_mode(backend="emulate"), nullcontext()):
        query = q.clone().requires_grad_()
        with context:
            out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask)
        results.append((out, *torch.autograd.grad(out.sum(), query)))
    for ours, torchs in zip(*results):
        assert torch.isfinite(ours).all() and torch.allclose(ours, torchs, rtol=1e-5, atol=1e-6)
    assert torch.equal(results[0][0][:, :, 1], torch.zeros(2, 3, 8))


def test_empty_sequences_and_mixed_dtypes_are_torchs():
    q = torch.randn(2, 3, 4, 8)
    with function_policy_mode(backend="emulate") as mode:
        no_sources = F.scaled_dot_product_attention(q, q[..., :0, :], q[..., :0, :])
        half = F.scaled_dot_product_attention(q.half(), q.half(), q.half(), attn_mask=torch.zeros(4, 4))
    assert torch.equal(no_sources, torch.zeros(2, 3, 4, 8)) and half.dtype == torch.float16
    reasons = {why for row in mode.report.rows() for why in row["why_native"]}
    assert reasons == {"a torch.float32 mask on torch.float16 inputs"}
    attention = torch.nn.MultiheadAttention(8, 2)
    x = torch.randn(4, 2, 8)
    with function_policy_mode(backend="emulate") as mode, pytest.raises(AssertionError):
        F.multi_head_attention_forward(x, x, x, 6, 2, attention.in_proj_weight, attention.in_proj_bias, None, None,
                                       False, 0.0, attention.out_proj.weight, attention.out_proj.bias)
    assert {why for row in mode.report.rows() for why in row["why_native"]} == {
        "embed_dim 8 against embed_dim_to_check 6"}


def test_attention_it_does_not_cover_runs_natively_and_is_counted():
    torch.manual_seed(3)
    attention = torch.nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
    x = torch.randn(2, 4, 8)
    padding = torch.tensor([[False, False, False, True]] * 2)
    with function_policy_mode(backend="emulate") as mode:
        extra_keys = attention(x, x, x)[0]
        padded = torch.nn.MultiheadAttention(8, 2, batch_first=True)(x, x, x, key_padding_mask=padding)[0]
    assert torch.equal(extra_keys, attention(x, x, x)[0]) and padded.shape == (2, 4, 8)
    reasons = {why for row in mode.report.rows() for why in row["why_native"]}
    assert reasons == {"bias_k, bias_v, static keys or values, or add_zero_attn", "masks"}


def test_the_kernels_own_calls_are_not_caught_again():
    a, b = torch.randn(6, 40, requires_grad=True), torch.randn(40, 3, requires_grad=True)
    with function_policy_mode(Reduction("splitk", splits=4), backend="emulate") as mode:
        matmul(a, b, Reduction("fixed"), backend="emulate").sum().backward()
    assert mode.report.total == 0
