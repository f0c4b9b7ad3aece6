"""Number formats: operand rounding (precision) and accumulation dtypes, in pure torch."""
from __future__ import annotations

import torch

ACCUMULATE_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
FLOAT_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TF32_DROPPED_BITS = 13  # fp32 keeps 23 mantissa bits, tf32 keeps 10


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to the nearest tf32 value (ties to even), kept in fp32 storage.

    Done on the bit pattern, exactly as the Triton kernels do, so that operands are tf32
    values before any multiply (the tensor cores then see exact tf32 inputs).
    """
    bits = x.contiguous().view(torch.int32)
    half = (1 << (TF32_DROPPED_BITS - 1)) - 1
    tie_to_even = (bits >> TF32_DROPPED_BITS) & 1
    rounded = ((bits + half + tie_to_even) & ~((1 << TF32_DROPPED_BITS) - 1)).view(torch.float32)
    return torch.where(torch.isnan(x), x, rounded)


def round_operand(x: torch.Tensor, precision: str) -> torch.Tensor:
    """The operand as the multiplier sees it: rounded to `precision`, stored as fp32 (fp64 for fp64)."""
    if precision == "fp64":
        return x.double()
    x = x.float()
    if precision == "fp32":
        return x
    if precision == "tf32":
        return round_to_tf32(x)
    if precision == "fp16":
        return x.half().float()
    if precision == "bf16":
        return x.bfloat16().float()
    raise ValueError(f"precision={precision!r} is not allowed")


def add_rounded(total: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """One correctly rounded addition in the dtype of `total`.

    fp16/bf16 sums are formed in fp32 and rounded once; fp32 has more than twice their
    precision plus two bits, so this equals a native fp16/bf16 add (no double-rounding error).
    """
    if total.dtype in (torch.float16, torch.bfloat16):
        return (total.float() + term.float()).to(total.dtype)
    return total + term
