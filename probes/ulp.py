"""Distances in units in the last place, computed on the floats' bit patterns.

Each float is mapped to a signed integer that orders like its value: the magnitude bits
(exponent and mantissa) for a positive number, their negation for a negative one. Adjacent
representable numbers then differ by exactly 1, across the sign boundary too (the smallest
positive and negative subnormals are 2 apart, with 0 between them), and through subnormals,
the largest finite value and infinity (inf is one step above the largest finite value).

Decision: +0 and -0 map to the same integer, so their ULP distance is 0 (they are the same
value); a bitwise comparison still counts them as different bits. A pair with exactly one NaN,
or two NaNs with different bits, has no ULP distance (NaN in the result); identical NaN bit
patterns have distance 0.
"""
from __future__ import annotations

import torch

# dtype -> (integer view of the same width, number of magnitude bits)
_BIT_LAYOUT = {
    torch.float16: (torch.int16, 15),
    torch.bfloat16: (torch.int16, 15),
    torch.float32: (torch.int32, 31),
    torch.float64: (torch.int64, 63),
}
ULP_DTYPES = tuple(_BIT_LAYOUT)


def check_ulp_dtype(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _BIT_LAYOUT:
        allowed = ", ".join(str(d).replace("torch.", "") for d in ULP_DTYPES)
        raise TypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}; ULP distances need one of: {allowed}")


def raw_bits(x: torch.Tensor) -> torch.Tensor:
    """Float tensors as same-width signed integers holding their bits; other dtypes unchanged."""
    x = x.detach().contiguous()
    if x.dtype in _BIT_LAYOUT:
        return x.view(_BIT_LAYOUT[x.dtype][0])
    return x


def sign_and_magnitude(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative, magnitude bits as int64) of a float tensor."""
    check_ulp_dtype(x)
    _, magnitude_bits = _BIT_LAYOUT[x.dtype]
    bits = raw_bits(x).to(torch.int64)
    negative = bits < 0
    return negative, bits & ((1 << magnitude_bits) - 1)


def ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """int64 keys that order like the values of x and step by 1 between neighbours."""
    negative, magnitude = sign_and_magnitude(x)
    return torch.where(negative, -magnitude, magnitude)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise |a - b| in ULPs of their dtype, as float64 (exact below 2**53)."""
    check_ulp_dtype(a, "a")
    check_ulp_dtype(b, "b")
    if a.dtype != b.dtype or a.shape != b.shape:
        raise ValueError(f"a and b must have the same dtype and shape; got {a.dtype} {tuple(a.shape)} "
                         f"and {b.dtype} {tuple(b.shape)}")
    negative_a, magnitude_a = sign_and_magnitude(a)
    negative_b, magnitude_b = sign_and_magnitude(b)
    same_sign = (magnitude_a - magnitude_b).abs().to(torch.float64)
    # opposite signs: the distance is the sum of the magnitudes (may exceed int64 for fp64)
    opposite = magnitude_a.to(torch.float64) + magnitude_b.to(torch.float64)
    distance = torch.where(negative_a == negative_b, same_sign, opposite)
    nan_a, nan_b = torch.isnan(a.detach()), torch.isnan(b.detach())
    same_bits = raw_bits(a) == raw_bits(b)
    undefined = (nan_a | nan_b) & ~same_bits
    distance = torch.where(nan_a & nan_b & same_bits, 0.0, distance)
    return torch.where(undefined, float("nan"), distance)
