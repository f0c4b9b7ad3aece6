"""Known answers for ULP distances, bitwise comparison and fingerprints."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from probes import compare, compare_dicts, fingerprint, ordered_bits, ulp_distance

REPO_ROOT = Path(__file__).resolve().parents[1]
INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}
SIGN_BIT = {torch.float16: -(1 << 15), torch.bfloat16: -(1 << 15), torch.float32: -(1 << 31),
            torch.float64: -(1 << 63)}


def from_bits(patterns, dtype):
    """Floats with the given bit patterns (signed integers of the dtype's width)."""
    return torch.tensor(patterns, dtype=torch.int64).to(INT_VIEW[dtype]).view(dtype)


def negative(magnitude, dtype):
    return SIGN_BIT[dtype] | magnitude


@pytest.mark.parametrize("dtype", list(INT_VIEW))
def test_ulp_distance_of_hand_built_bit_patterns(dtype):
    one = {torch.float16: 0x3C00, torch.bfloat16: 0x3F80, torch.float32: 0x3F800000,
           torch.float64: 0x3FF0000000000000}[dtype]
    smallest_normal = {torch.float16: 0x0400, torch.bfloat16: 0x0080, torch.float32: 0x00800000,
                       torch.float64: 0x0010000000000000}[dtype]
    infinity = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80, torch.float32: 0x7F800000,
                torch.float64: 0x7FF0000000000000}[dtype]
    pairs = [  # (bits a, bits b, expected ULPs)
        (one, one + 1, 1),                              # neighbours
        (one, one + 7, 7),
        (1, negative(1, dtype), 2),                     # smallest subnormals across zero
        (0, negative(0, dtype), 0),                     # +0 and -0: same value
        (0, 3, 3),                                      # zero to a subnormal
        (5, smallest_normal, smallest_normal - 5),      # subnormal to the smallest normal
        (one, negative(one, dtype), 2 * one),           # 1 and -1
        (negative(one + 2, dtype), negative(one, dtype), 2),
        (infinity - 1, infinity, 1),                    # largest finite to inf
    ]
    a = from_bits([p[0] for p in pairs], dtype)
    b = from_bits([p[1] for p in pairs], dtype)
    expected = torch.tensor([float(p[2]) for p in pairs], dtype=torch.float64)
    assert torch.equal(ulp_distance(a, b), expected), (ulp_distance(a, b), expected)
    assert torch.equal(ulp_distance(b, a), expected)


@pytest.mark.parametrize("dtype", list(INT_VIEW))
def test_nextafter_is_one_ulp_and_ordered_bits_sort_like_values(dtype, generator):
    # values from 1e-40 to 1e3 in magnitude, both signs: subnormals (fp16/fp32) and normals
    scales = torch.logspace(-40, 3, 500, dtype=torch.float64)
    x = (torch.randn(500, generator=generator, dtype=torch.float64) * scales).to(dtype)
    x = x[x != 0]
    towards = torch.full_like(x, float("inf"))
    up = torch.nextafter(x, towards)
    assert torch.equal(ulp_distance(x, up), torch.ones(x.numel(), dtype=torch.float64))
    keys = ordered_bits(torch.sort(x).values)
    assert bool((keys[1:] >= keys[:-1]).all()), "ordered_bits must sort like the values"


def test_nan_handling_in_ulp_distance():
    nan = torch.tensor([float("nan")])
    one = torch.tensor([1.0])
    assert torch.isnan(ulp_distance(nan, one)).all()
    assert ulp_distance(nan, nan).item() == 0.0


def test_compare_reports_counts_first_index_and_ulps(generator):
    a = torch.randn(3, 4, 5, generator=generator)
    b = a.clone()
    flat = b.view(-1)
    flat[27] = torch.nextafter(flat[27], torch.tensor(float("inf")))
    flat[41] = torch.nextafter(torch.nextafter(flat[41], torch.tensor(0.0)), torch.tensor(0.0))
    flat[59] = float("nan")
    result = compare(a, b)
    assert result.numel == 60 and result.n_differ == 3
    assert result.frac_differ == pytest.approx(3 / 60)
    assert result.first_diff == [1, 1, 2]  # flat index 27 in a (3, 4, 5) tensor
    assert result.max_ulp == 2.0
    assert result.mean_ulp == pytest.approx(3 / 59)  # the NaN pair has no ULP distance
    assert (result.nan_a, result.nan_b, result.inf_a, result.inf_b) == (0, 1, 0, 0)
    assert result.max_abs == pytest.approx(float((a.view(-1)[41] - b.view(-1)[41]).abs()))
    assert not result.identical
    assert compare(a, a.clone()).identical


def test_compare_counts_signed_zero_as_a_bitwise_difference_of_zero_ulps():
    result = compare(torch.tensor([0.0, 1.0]), torch.tensor([-0.0, 1.0]))
    assert result.n_differ == 1 and result.max_ulp == 0.0 and result.max_rel == 0.0


def test_compare_dicts_and_integer_entries(generator):
    state = {"w": torch.randn(4, generator=generator), "steps": torch.tensor(3)}
    other = {"w": state["w"].clone(), "steps": torch.tensor(4)}
    results = compare_dicts(state, other)
    assert results["w"].identical
    assert results["steps"].n_differ == 1 and results["steps"].max_ulp is None
    with pytest.raises(ValueError, match="only in a"):
        compare_dicts(state, {"w": state["w"]})
    with pytest.raises(ValueError, match="same dtype and shape"):
        compare(torch.zeros(2), torch.zeros(3))


FINGERPRINT_SCRIPT = textwrap.dedent("""
    import torch
    from probes import fingerprint
    g = torch.Generator().manual_seed(7)
    state = {"b": torch.randn(3, 5, generator=g).bfloat16(), "a": {"w": torch.randn(4, generator=g), "n": 3}}
    print(fingerprint(state))
""")


def test_fingerprint_is_stable_across_processes_and_key_order():
    other_process = subprocess.run([sys.executable, "-c", FINGERPRINT_SCRIPT], capture_output=True, text=True,
                                   check=True, cwd=REPO_ROOT).stdout.strip()
    g = torch.Generator().manual_seed(7)
    b = torch.randn(3, 5, generator=g).bfloat16()
    state = {"a": {"n": 3, "w": torch.randn(4, generator=g)}, "b": b}
    assert other_process == fingerprint(state)


def test_fingerprint_sees_one_flipped_bit_dtype_and_shape_but_not_strides(generator):
    x = torch.randn(6, 7, generator=generator)
    reference = fingerprint(x)
    flipped = x.clone()
    flipped.view(torch.int32).view(-1)[17] ^= 1
    assert fingerprint(flipped) != reference
    assert fingerprint(x.t().contiguous().t()) == reference  # same values, other strides
    assert fingerprint(x.view(torch.int32)) != reference  # same bytes, other dtype
    assert fingerprint(x.reshape(7, 6)) != reference
    assert fingerprint({"x": x}) != fingerprint({"y": x})
    with pytest.raises(TypeError, match="fingerprint"):
        fingerprint(object())
