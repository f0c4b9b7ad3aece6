"""What a reduction is allowed to do: its order (mode), its split of K and its number formats.

`Reduction` describes one GEMM-like reduction; `Policy` assigns one to each role of a layer
(forward, input gradient, weight gradient), so each noise source can be switched on alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

MODES = ("fixed", "splitk", "atomic")
GRANULARITIES = ("call", "tile", "element")
# What the Triton kernels run; fp64 is the emulate backend's float64 reference path only.
KERNEL_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
KERNEL_ACCUMULATES = ("fp32", "fp16", "bf16")
PRECISIONS = (*KERNEL_PRECISIONS, "fp64")
ACCUMULATES = (*KERNEL_ACCUMULATES, "fp64")
ROLES = ("forward", "input_grad", "weight_grad")
DEFAULT_NOISY_SPLITS = 8
SEED_LIMIT = 2**32


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def check_plain_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class Reduction:
    """How one reduction is ordered and rounded.

    mode:        "fixed" (one order, same bits every call), "splitk" (K chunks summed in a
                 seeded pseudo-random order that advances call by call), "atomic" (chunks
                 added with atomic adds: hardware order on a GPU, OS-random order on CPU).
    splits:      number of K chunks; default 1 for fixed, 8 for splitk/atomic.
    seed:        seeds the splitk order, 0 <= seed < 2**32.
    granularity: how finely the splitk order varies: one order per "call", per 64x64 output
                 "tile", or per output "element".
    precision:   operand format of the multiplies (fp64 only on the emulate backend, for
                 gradient checks).
    accumulate:  format of each chunk's partial sum and of the additions between chunks.
    """

    mode: str = "fixed"
    splits: int | None = None
    seed: int = 0
    granularity: str = "element"
    precision: str = "fp32"
    accumulate: str = "fp32"

    def __post_init__(self):
        _choice("mode", self.mode, MODES)
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("accumulate", self.accumulate, ACCUMULATES)
        if self.splits is None:
            object.__setattr__(self, "splits", 1 if self.mode == "fixed" else DEFAULT_NOISY_SPLITS)
        check_plain_int("splits", self.splits)
        if self.splits < 1:
            raise ValueError(f"splits={self.splits} is not allowed; splits must be >= 1")
        check_plain_int("seed", self.seed)
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed={self.seed} is not allowed; seed must be in [0, 2**32)")
        if (self.precision == "fp64") != (self.accumulate == "fp64"):
            raise ValueError("precision='fp64' and accumulate='fp64' go together (the float64 reference path)")

    @property
    def seeded(self) -> bool:
        """True when the order comes from the seed and the call counter."""
        return self.mode == "splitk" and self.splits > 1

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.mode == "fixed":
            order = f"fixed(splits={self.splits})"
        elif self.mode == "splitk":
            order = f"splitk(splits={self.splits}, seed={self.seed}, {self.granularity})"
        else:
            order = f"atomic(splits={self.splits})"
        return f"{order} {self.precision}->{self.accumulate}"



@dataclass(frozen=True)
class Policy:
    """One Reduction per role of a layer: forward, input (data) gradient, weight gradient."""

    forward: Reduction = field(default_factory=Reduction)
    input_grad: Reduction = field(default_factory=Reduction)
    weight_grad: Reduction = field(default_factory=Reduction)

    def __post_init__(self):
        for role in ROLES:
            value = getattr(self, role)
            if not isinstance(value, Reduction):
                raise TypeError(f"Policy.{role} must be a kernels.Reduction, got {type(value).__name__}")

    @classmethod
    def uniform(cls, reduction: Reduction) -> "Policy":
        """The same reduction in every role."""
        return cls(reduction, reduction, reduction)

    def to_dict(self) -> dict:
        return {role: getattr(self, role).to_dict() for role in ROLES}

    def describe(self) -> str:
        return ", ".join(f"{role}: {getattr(self, role).describe()}" for role in ROLES)


def as_policy(reduction_or_policy) -> Policy:
    """Accept None (fixed fp32 everywhere), a Reduction (used in every role) or a Policy."""
    if reduction_or_policy is None:
        return Policy()
    if isinstance(reduction_or_policy, Policy):
        return reduction_or_policy
    if isinstance(reduction_or_policy, Reduction):
        return Policy.uniform(reduction_or_policy)
    raise TypeError(
        f"expected a kernels.Reduction, a kernels.Policy or None, got {type(reduction_or_policy).__name__}"
    )
