"""How alike a layer's channels are: forward/backward weight correlation and effective width.

Definitions (paper eq. 5, 6). A conv weight (C_out, C_in, kh, kw) or linear weight (out, in) is
split into rows: C_out output filters (forward) or C_in input slices (backward). The correlation

    C = mean over ordered pairs i != j of  s(W_i, W_j)

uses s = cosine similarity <W_i, W_j> / (|W_i| |W_j|) (the paper, kind="cosine") or the Pearson
correlation of the two rows (the reference code's np.corrcoef, kind="pearson"). Conventions:
a pair involving a zero-norm row (zero-variance row for Pearson) has similarity 1, i.e. it counts
as identical, as the reference code's NaN -> 1; so an all-zero tensor has C = 1. A tensor with a
single row has no pairs and C = 1 (one channel is trivially symmetric). A weight holding NaN or
inf says nothing about symmetry: its C, dissimilarity and effective width are NaN, the layer is
flagged (`finite` False), and a maximum over layers that include it is NaN.

The computation is one float64 Gram matrix of the rows, on one thread (so its bits do not depend
on the thread count), then a pass over the pairs (compiled on the CPU). `max_rows` samples that
many rows without replacement with a seeded generator (the reference code sampled at most 5000).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numba
import torch
from torch import nn

from kernels import reducing_layers
from kernels.workers_emulate import one_thread

KINDS = ("cosine", "pearson")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; choose one of {', '.join(map(repr, KINDS))}")


def _check_weight(w) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"w must be a real floating-point tensor, got dtype {str(w.dtype).replace('torch.', '')}")
    if w.dim() not in (2, 4):
        raise ValueError(
            f"w must be a linear weight (out, in) or a conv weight (C_out, C_in, kh, kw); got shape {tuple(w.shape)}"
        )


def forward_rows(w: torch.Tensor) -> torch.Tensor:
    """The C_out output filters of a weight, one per row, as float64."""
    _check_weight(w)
    return w.detach().to(torch.float64).flatten(1)


def backward_rows(w: torch.Tensor) -> torch.Tensor:
    """The C_in input slices of a weight (what each input channel sends forward), one per row."""
    _check_weight(w)
    return w.detach().to(torch.float64).transpose(0, 1).flatten(1)


def _sample_rows(rows: torch.Tensor, max_rows: int | None, seed: int) -> torch.Tensor:
    if max_rows is None or rows.shape[0] <= max_rows:
        return rows
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 2:
        raise ValueError(f"max_rows={max_rows!r} is not allowed; use None (exact) or an int >= 2")
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(rows.shape[0], generator=generator)[:max_rows]
    return rows[picked.to(rows.device)]


def row_similarity_mean(rows: torch.Tensor, kind: str = "cosine") -> float:
    """Mean of s(row_i, row_j) over ordered pairs i != j (see the module docstring)."""
    _check_kind(kind)
    rows = rows.to(torch.float64)
    n = rows.shape[0]
    with one_thread():  # torch's float64 matmul and sums split their work by the thread count
        if kind == "pearson":
            rows = rows - rows.mean(dim=1, keepdim=True)
        gram = rows @ rows.T
        squares = gram.diagonal()
        # an inf or NaN makes its row's sum of squares non-finite (finite rows overflow it only past 1e154)
        if not bool(torch.isfinite(squares).all()) and not bool(torch.isfinite(rows).all()):
            return math.nan
        if n < 2 or torch.equal(rows, rows[:1].expand_as(rows)):  # every pair alike, as below: exactly 1
            return 1.0
        norms = squares.clamp_min(0).sqrt()
        if rows.device.type == "cpu":
            return _pair_mean(rows.numpy(), gram.numpy(), norms.numpy())
        outer = norms[:, None] * norms[None, :]
        # Equal rows are exactly alike: their quotient could round an ulp below 1 (a sum of squares
        # over the product of its square roots), which would read as broken symmetry.
        _, group = torch.unique(rows, dim=0, return_inverse=True)
        alike = (group[:, None] == group[None, :]) | (outer == 0)
        similarity = torch.where(alike, 1.0, gram / outer).clamp(-1.0, 1.0)
        off_diagonal = similarity.sum() - similarity.diagonal().sum()
    return float(off_diagonal / (n * (n - 1)))


@numba.njit(cache=True)
def _pair_mean(rows, gram, norms):  # pragma: no cover - compiled
    """The same mean on the CPU, in one compiled pass over the pairs (a run's per-step check of
    the quick net's nine layers took 2-3 ms in torch's operators): each pair's similarity
    gram / (norm * norm) clamped to [-1, 1], or exactly 1 for equal rows and zero norms. It sums
    each pair's distance from 1 (exact near 1), row by row, so that C_f a few ulps below 1 keeps
    its digits: summing the similarities themselves lost them to the rounding of a sum of
    thousands of terms near 1."""
    n, length = rows.shape
    total = 0.0
    for i in range(n):
        row = 0.0
        for j in range(n):
            if j == i:
                continue
            outer = norms[i] * norms[j]
            alike = outer == 0
            if not alike:
                k = 0
                while k < length and rows[i, k] == rows[j, k]:
                    k += 1
                alike = k == length
            if not alike:
                row += 1.0 - min(1.0, max(-1.0, gram[i, j] / outer))
        total += row
    return 1.0 - total / (n * (n - 1))


def forward_correlation(w: torch.Tensor, kind: str = "cosine", max_rows: int | None = None, seed: int = 0) -> float:
    """C_f: mean similarity between the output filters of `w`."""
    return row_similarity_mean(_sample_rows(forward_rows(w), max_rows, seed), kind)


def backward_correlation(w: torch.Tensor, kind: str = "cosine", max_rows: int | None = None, seed: int = 0) -> float:
    """C_b: mean similarity between the input slices of `w`."""
    return row_similarity_mean(_sample_rows(backward_rows(w), max_rows, seed), kind)


def dissimilarity(c: float) -> float:
    """sqrt(1 - C^2), the paper's per-layer dissimilarity (C clamped to [-1, 1]; NaN stays NaN)."""
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise TypeError(f"a correlation must be a real number, got {type(c).__name__}")
    if math.isnan(c):
        return math.nan
    return math.sqrt(max(0.0, 1.0 - min(1.0, c * c)))


def effective_width(n: int, c: float) -> float:
    """1 + (n - 1) sqrt(1 - C^2): n channels with correlation C act like this many distinct ones."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TypeError(f"n must be a number of channels (an int >= 1), got {n!r}")
    return 1.0 + (n - 1) * dissimilarity(c)


def mean_dissimilarity(correlations) -> float:
    """(1/L) sum over layers of sqrt(1 - C_f^2)."""
    correlations = list(correlations)
    if not correlations:
        raise ValueError("mean_dissimilarity needs at least one correlation")
    return sum(dissimilarity(c) for c in correlations) / len(correlations)


def max_correlation(correlations) -> float:
    """The largest C; NaN when any is NaN (Python's max would depend on where the NaN stands)."""
    correlations = list(correlations)
    return math.nan if any(math.isnan(c) for c in correlations) else max(correlations)


@dataclass
class LayerSymmetry:
    """The symmetry record of one conv or linear layer."""

    name: str
    kind: str
    n_out: int
    n_in: int
    forward: float
    backward: float
    effective_width: float
    finite: bool

    def to_dict(self) -> dict:
        return asdict(self)


def weight_symmetry(name: str, w: torch.Tensor, kind: str = "cosine", max_rows: int | None = None,
                    seed: int = 0) -> LayerSymmetry:
    """Forward and backward correlation and effective width of one conv (4-D) or linear (2-D) weight."""
    forward = forward_correlation(w, kind, max_rows, seed)
    return LayerSymmetry(
        name=name,
        kind="conv" if w.dim() == 4 else "linear",
        n_out=w.shape[0],
        n_in=w.shape[1],
        forward=forward,
        backward=backward_correlation(w, kind, max_rows, seed),
        effective_width=effective_width(w.shape[0], forward),
        finite=bool(torch.isfinite(w.detach()).all()),
    )


def symmetry_report(named_weights, kind: str = "cosine", max_rows: int | None = None, seed: int = 0,
                    summary_kinds: tuple = ("conv",)) -> dict:
    """Per-layer symmetry of (name, weight) pairs and the summary over `summary_kinds` layers.

    The summary (max forward C and mean dissimilarity) covers conv layers by default, as the
    paper's Table 2 (13 conv layers; a zero-initialised classifier would otherwise pin max C_f at 1).
    "non_finite" names the layers whose weights hold NaN or inf.
    """
    layers = [weight_symmetry(name, w, kind, max_rows, seed) for name, w in named_weights]
    summarised = [layer.forward for layer in layers if layer.kind in summary_kinds]
    return {
        "kind": kind,
        "layers": [layer.to_dict() for layer in layers],
        "summary_kinds": list(summary_kinds),
        "max_forward": max_correlation(summarised) if summarised else None,
        "mean_dissimilarity": mean_dissimilarity(summarised) if summarised else None,
        "non_finite": [layer.name for layer in layers if not layer.finite],
    }


def model_symmetry(model: nn.Module, kind: str = "cosine", max_rows: int | None = None, seed: int = 0,
                   summary_kinds: tuple = ("conv",)) -> dict:
    """symmetry_report of every nn.Conv2d / nn.Linear (subclasses included) of a model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = [(name, m.weight) for name, m in reducing_layers(model)]
    return symmetry_report(named, kind, max_rows, seed, summary_kinds)


def state_dict_symmetry(state: dict, kind: str = "cosine", max_rows: int | None = None, seed: int = 0,
                        summary_kinds: tuple = ("conv",)) -> dict:
    """symmetry_report of a state_dict's conv (4-D) and linear (2-D) ".weight" entries, in order."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a state_dict (a dict of tensors), got {type(state).__name__}")
    named = [(key[: -len(".weight")], value) for key, value in state.items() if isinstance(key, str)
             and key.endswith(".weight") and isinstance(value, torch.Tensor) and value.dim() in (2, 4)]
    return symmetry_report(named, kind, max_rows, seed, summary_kinds)
