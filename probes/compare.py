"""Bitwise and ULP comparison of two tensors (or two dicts of tensors, e.g. state_dicts).

"Differing" is bitwise: two elements differ when their bit patterns differ (so +0 vs -0 and
two NaNs with different payloads differ). ULP statistics follow probes.ulp (where +0/-0 are 0
apart) and cover the pairs whose distance is defined; absolute and relative differences cover
the pairs where both values are finite. Relative difference is |a - b| / max(|a|, |b|)
(symmetric in a and b; 0 when both are 0).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from .ulp import ULP_DTYPES, raw_bits, ulp_distance


@dataclass
class Comparison:
    """How two same-shaped tensors differ."""

    dtype: str
    shape: list
    numel: int
    n_differ: int
    frac_differ: float
    max_ulp: float | None
    mean_ulp: float | None
    max_abs: float | None
    max_rel: float | None
    first_diff: list | None
    nan_a: int
    nan_b: int
    inf_a: int
    inf_b: int

    @property
    def identical(self) -> bool:
        return self.n_differ == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "identical": self.identical}


def _count(mask: torch.Tensor) -> int:
    return int(mask.sum())


def _float_statistics(a: torch.Tensor, b: torch.Tensor) -> dict:
    ulps = ulp_distance(a, b).flatten()
    defined = ulps[~torch.isnan(ulps)]
    a64, b64 = a.detach().double().flatten(), b.detach().double().flatten()
    finite = torch.isfinite(a64) & torch.isfinite(b64)
    a64, b64 = a64[finite], b64[finite]
    absolute = (a64 - b64).abs()
    scale = torch.maximum(a64.abs(), b64.abs())
    relative = torch.where(scale > 0, absolute / scale, 0.0)
    return {
        "max_ulp": float(defined.max()) if defined.numel() else None,
        "mean_ulp": float(defined.mean()) if defined.numel() else None,
        "max_abs": float(absolute.max()) if absolute.numel() else None,
        "max_rel": float(relative.max()) if relative.numel() else None,
        "nan_a": _count(torch.isnan(a)),
        "nan_b": _count(torch.isnan(b)),
        "inf_a": _count(torch.isinf(a)),
        "inf_b": _count(torch.isinf(b)),
    }


def compare(a: torch.Tensor, b: torch.Tensor) -> Comparison:
    """Compare a and b bit for bit, and in ULPs when they are fp16/bf16/fp32/fp64."""
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if a.dtype != b.dtype or a.shape != b.shape:
        raise ValueError(f"a and b must have the same dtype and shape; got {a.dtype} {tuple(a.shape)} "
                         f"and {b.dtype} {tuple(b.shape)}")
    a, b = a.detach().cpu(), b.detach().cpu()
    differ = raw_bits(a) != raw_bits(b)
    n_differ = _count(differ)
    first = None
    if n_differ:
        flat_index = int(differ.flatten().nonzero()[0])
        first = [int(i) for i in torch.unravel_index(torch.tensor(flat_index), a.shape)]
    if a.dtype in ULP_DTYPES:
        stats = _float_statistics(a, b)
    else:
        stats = dict(max_ulp=None, mean_ulp=None, max_abs=None, max_rel=None, nan_a=0, nan_b=0, inf_a=0, inf_b=0)
    return Comparison(
        dtype=str(a.dtype).replace("torch.", ""),
        shape=list(a.shape),
        numel=a.numel(),
        n_differ=n_differ,
        frac_differ=n_differ / a.numel() if a.numel() else 0.0,
        first_diff=first,
        **stats,
    )


def compare_dicts(a: dict, b: dict) -> dict[str, Comparison]:
    """compare() for every tensor entry of two dicts with the same keys (e.g. two state_dicts)."""
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a dict (a state_dict, say), got {type(value).__name__}")
    if set(a) != set(b):
        only_a, only_b = sorted(map(str, set(a) - set(b))), sorted(map(str, set(b) - set(a)))
        raise ValueError(f"the dicts have different keys: only in a {only_a}, only in b {only_b}")
    return {key: compare(a[key], b[key]) for key in sorted(a, key=str) if isinstance(a[key], torch.Tensor)}
