"""Known answers for the weight-correlation probes (paper section 6 values)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from probes import (
    backward_correlation,
    effective_width,
    forward_correlation,
    mean_dissimilarity,
    model_symmetry,
    state_dict_symmetry,
)
from probes.symmetry import _pair_mean


def orthonormal_rows(count, length, generator, centred=False):
    """`count` orthonormal rows; with centred=True each row also has mean 0 (orthogonal after centring)."""
    rows = torch.randn(count, length, generator=generator, dtype=torch.float64)
    if centred:
        rows = rows - rows.mean(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(rows.T)
    return q.T.contiguous()


@pytest.mark.parametrize("kind", ["cosine", "pearson"])
def test_iid_random_weights_are_uncorrelated(kind, generator):
    w = torch.randn(64, 16, 3, 3, generator=generator)
    # each pairwise similarity has std ~ 1/sqrt(144) = 0.083; the mean over 2016 pairs has std
    # ~0.002 (rows independent), so 0.02 is a 10-sigma bound
    assert abs(forward_correlation(w, kind)) < 0.02
    assert abs(backward_correlation(w, kind)) < 0.02


@pytest.mark.parametrize("kind", ["cosine", "pearson"])
def test_constant_and_zero_weights_count_as_fully_correlated(kind, generator):
    value = float(torch.rand(1, generator=generator)) + 0.5
    for w in (torch.full((10, 4, 3, 3), value), torch.zeros(10, 4, 3, 3), torch.zeros(7, 5)):
        assert forward_correlation(w, kind) == pytest.approx(1.0, abs=1e-12)
        assert backward_correlation(w, kind) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "pearson"])
@pytest.mark.parametrize("unique,copies", [(8, 2), (5, 4), (3, 7)])
def test_replication_gives_p_minus_1_over_n_minus_1(kind, unique, copies, generator):
    rows = orthonormal_rows(unique, 6 * 9, generator, centred=kind == "pearson")
    scale = torch.rand(unique * copies, 1, generator=generator, dtype=torch.float64) + 0.5
    # replica r of unique row u sits at index r * unique + u, each copy with its own positive scale
    filters = (rows.repeat(copies, 1) * scale).reshape(unique * copies, 6, 3, 3)
    n = unique * copies
    expected = (copies - 1) / (n - 1)
    assert forward_correlation(filters, kind) == pytest.approx(expected, abs=1e-12)
    # the same replication along the input channels is what the backward correlation sees
    assert backward_correlation(filters.transpose(0, 1), kind) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "pearson"])
def test_identical_rows_are_exactly_alike_and_one_row_apart_is_not(kind, generator):
    """Rows all equal give exactly 1 (no rounding below it); one row changed in one entry, less."""
    row = torch.randn(1, 144, generator=generator)
    w = row.repeat(16, 1)
    assert forward_correlation(w, kind) == 1.0
    w[5, 7] += 1e-3
    assert forward_correlation(w, kind) < 1.0


def test_equal_rows_count_as_exactly_alike_whatever_their_quotient():
    """The CPU pass over the pairs: rows 0 and 1 equal count 1, not their Gram entry over the
    product of their norms (set to 0 here, as rounding would set it a few ulps below 1); rows 0
    and 2 are orthogonal. So C = 2 ordered pairs of 6."""
    rows = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, -1.0]])
    gram = rows @ rows.T
    norms = np.sqrt(gram.diagonal())
    gram[0, 1] = gram[1, 0] = 0.0
    assert _pair_mean(rows, gram, norms) == pytest.approx(1 / 3, abs=1e-16)


@pytest.mark.parametrize("shape", [(16, 9), (32, 144), (64, 576)])
def test_rows_a_rounding_apart_keep_their_distance_from_1(generator, shape):
    """Before symmetry breaks, C_f is a few ulps below 1: within 2 ulps of the exactly rounded
    mean of the pairs' similarities (the same float64 Gram formula), though thousands of terms near
    1 are added."""
    rows = torch.randn(1, shape[1], generator=generator, dtype=torch.float64)
    rows = rows + 1e-7 * torch.randn(shape, generator=generator, dtype=torch.float64)
    gram = rows @ rows.T
    norms = gram.diagonal().sqrt()
    similarity = (gram / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)
    n = shape[0]
    exact = math.fsum(similarity[i, j].item() for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    assert 1.0 - exact > 1e-15  # the case at stake: a distance from 1 that a plain running sum loses
    assert abs(forward_correlation(rows) - exact) <= 2**-52


def test_pearson_matches_numpy_corrcoef(generator):
    w = torch.randn(12, 30, generator=generator) + torch.randn(1, 30, generator=generator)
    corr = np.corrcoef(w.double().numpy())
    expected = (corr.sum() - np.trace(corr)) / (12 * 11)
    assert forward_correlation(w, "pearson") == pytest.approx(expected, abs=1e-12)


def test_zero_rows_count_as_identical(generator):
    rows = orthonormal_rows(6, 20, generator)
    rows[2] = 0.0
    # pairs (2, j) and (j, 2): 2 * 5 ordered pairs of similarity 1, all others 0
    assert forward_correlation(rows) == pytest.approx(10 / 30, abs=1e-12)


def test_sampling_is_seeded_and_exact_when_it_covers_every_row(generator):
    w = torch.randn(200, 40, generator=generator)
    w[100:] = w[:100]
    exact = forward_correlation(w)
    assert forward_correlation(w, max_rows=200) == exact
    sampled = forward_correlation(w, max_rows=50, seed=3)
    assert sampled == forward_correlation(w, max_rows=50, seed=3)
    assert sampled != forward_correlation(w, max_rows=50, seed=4)
    # exact C = 1/199 (each row has one copy); 50 sampled rows hold ~6 copy pairs (C ~ 0.005,
    # spread ~0.002 from the pair count and ~0.001 from the random rows), so 0.01 is generous
    assert abs(sampled - exact) < 0.01


def test_effective_width_and_dissimilarity():
    assert effective_width(160, 0.0) == 160
    assert effective_width(160, 1.0) == 1
    assert effective_width(5, 0.6) == pytest.approx(1 + 4 * 0.8)
    assert mean_dissimilarity([0.0, 1.0, 0.6]) == pytest.approx((1 + 0 + 0.8) / 3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kind"):
        forward_correlation(torch.ones(3, 3), kind="spearman")
    with pytest.raises(ValueError, match="shape"):
        forward_correlation(torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match="max_rows"):
        forward_correlation(torch.ones(9, 3), max_rows=1)


def test_model_symmetry_reports_every_conv_and_linear(generator):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1, bias=False), nn.Flatten(), nn.Linear(8, 4)
    )
    with torch.no_grad():
        model[2].weight.fill_(1 / 8)  # an averaging 1x1 conv: every filter identical
        model[4].weight.zero_()
    report = model_symmetry(model)
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert list(layers) == ["0", "2", "4"]
    assert [layers[n]["kind"] for n in layers] == ["conv", "conv", "linear"]
    assert (layers["0"]["n_out"], layers["0"]["n_in"]) == (8, 3)
    assert layers["2"]["forward"] == pytest.approx(1.0) and layers["2"]["effective_width"] == pytest.approx(1.0)
    assert layers["4"]["forward"] == 1.0
    # the summary covers conv layers only (as the paper's Table 2)
    assert report["max_forward"] == pytest.approx(1.0)
    expected = (math.sqrt(1 - layers["0"]["forward"] ** 2) + 0.0) / 2
    assert report["mean_dissimilarity"] == pytest.approx(expected)


def test_state_dict_symmetry_reads_conv_and_linear_weights(generator):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    from_model = model_symmetry(model)
    from_state = state_dict_symmetry(model.state_dict())
    assert [layer["name"] for layer in from_state["layers"]] == ["0", "3"]  # batch norm weights are 1-D
    assert from_state["layers"] == from_model["layers"]
