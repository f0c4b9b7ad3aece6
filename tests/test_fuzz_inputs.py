"""Malformed and non-finite input to the public functions: a clear error, or a result that says so.

A clear error is a ValueError or TypeError whose message names what is wrong; anything else
(AttributeError, IndexError, a RuntimeError from inside torch) is a failure. Non-finite weights never
read as symmetry: their correlations are NaN and the layer is flagged.

SYMBREAK_FUZZ_EXAMPLES=N runs N examples per property (default: a CI-sized handful).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import probes
from kernels import Policy
from probes.symmetry import symmetry_report
from test_fuzz_settings import fuzz

NON_FINITE = (math.nan, math.inf, -math.inf)


# ---------------------------------------------------------------- non-finite weights and symmetry

@st.composite
def poisoned_weights(draw):
    """A linear or conv weight with at least one NaN or inf (all of them, possibly)."""
    shape = draw(st.sampled_from([(4, 3), (2, 5), (6, 2, 3, 3), (3, 3, 1, 1)]))
    base = draw(st.sampled_from(["zeros", "ones", "random"]))
    w = {"zeros": torch.zeros, "ones": torch.ones, "random": torch.randn}[base](shape)
    flat = w.view(-1)
    count = draw(st.integers(1, flat.numel()))
    for index in draw(st.lists(st.integers(0, flat.numel() - 1), min_size=count, max_size=count)):
        flat[index] = draw(st.sampled_from(NON_FINITE))
    return w


@fuzz(30)
@given(w=poisoned_weights(), kind=st.sampled_from(["cosine", "pearson"]))
def test_non_finite_weights_have_nan_correlations(w, kind):
    assert math.isnan(probes.forward_correlation(w, kind))
    assert math.isnan(probes.backward_correlation(w, kind))
    layer = probes.weight_symmetry("layer", w, kind)
    assert not layer.finite
    assert math.isnan(layer.effective_width)


@pytest.mark.parametrize("value", NON_FINITE)
def test_a_single_non_finite_weight_never_reads_as_symmetric(value):
    w = torch.ones(8, 4)
    w[0, 0] = value
    assert math.isnan(probes.forward_correlation(w))
    everything = torch.full((8, 4), value)
    assert math.isnan(probes.forward_correlation(everything))


def test_dissimilarity_and_effective_width_of_nan_are_nan():
    assert math.isnan(probes.effective_width(16, math.nan))
    assert math.isnan(probes.mean_dissimilarity([0.5, math.nan]))
    assert math.isnan(probes.mean_dissimilarity([math.nan, 0.5]))


@pytest.mark.parametrize("order", [0, 1])
def test_report_flags_non_finite_layers_and_its_maximum_is_nan(order):
    poisoned = torch.full((4, 3, 3, 3), math.nan)
    fine = torch.randn(4, 3, 3, 3)
    named = [("poisoned", poisoned), ("fine", fine)][::1 if order == 0 else -1]
    report = symmetry_report(named)
    assert report["non_finite"] == ["poisoned"]
    assert math.isnan(report["max_forward"]) and math.isnan(report["mean_dissimilarity"])
    flags = {layer["name"]: layer["finite"] for layer in report["layers"]}
    assert flags == {"poisoned": False, "fine": True}


@fuzz(30)
@given(shape=st.sampled_from([(4, 3), (5, 2, 3, 3), (1, 7), (7, 1)]), seed=st.integers(0, 2**31))
def test_finite_weights_are_flagged_finite_with_correlations_in_range(shape, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    layer = probes.weight_symmetry("layer", w)
    assert layer.finite
    assert -1.0 <= layer.forward <= 1.0 and -1.0 <= layer.backward <= 1.0


# ---------------------------------------------------------------- junk arguments to every public function

def _junk():
    """Values no public function takes in the place they land: a clear error is the only answer."""
    tensors = st.sampled_from([
        torch.empty(0), torch.ones(3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.bool), torch.randn(4),
        torch.randn(2, 3, 4), torch.full((3, 3), math.nan), torch.randn(2, 2, dtype=torch.complex64),
        torch.randn(5, 0), torch.randn(1, 1, 1, 1, 1)])
    return st.one_of(st.none(), st.booleans(), st.integers(-5, 64), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=4), st.lists(st.integers(-2, 2), max_size=3), st.dictionaries(st.text(max_size=2),
                     st.integers(), max_size=2), tensors, st.just(nn.Identity()), st.just(object()))


def _public_callables(package: str):
    """(name, callable) of a package's public functions and classes."""
    import kernels
    import nets
    from nets.data import load_dataset
    from nets.training import build_config

    if package == "kernels":
        names = [name for name in kernels.__all__ if callable(getattr(kernels, name)) and name != "counting"]
        return [(f"kernels.{name}", getattr(kernels, name)) for name in names] + [("Policy.uniform", Policy.uniform)]
    if package == "probes":
        return [(f"probes.{name}", getattr(probes, name)) for name in probes.__all__
                if callable(getattr(probes, name)) and name != "device_info"]
    return [("nets.build", nets.build), ("nets.data.load_dataset", load_dataset),
            ("nets.training.build_config", build_config)]


@pytest.mark.parametrize("package", ["kernels", "probes", "nets"])
@fuzz(100)
@given(data=st.data())
def test_public_functions_refuse_junk_with_a_clear_error(package, data):
    name, function = data.draw(st.sampled_from(_public_callables(package)))
    args = data.draw(st.lists(_junk(), max_size=3))
    try:
        function(*args)
    except (ValueError, TypeError) as error:
        assert str(error), f"{name}{tuple(args)!r} raised {type(error).__name__} without a message"
