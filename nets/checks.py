"""Argument checks shared by the networks, the datasets and the by-name builders.

Every check raises TypeError for a value of the wrong type and ValueError for a value out of
range, naming the argument and what is allowed, so a typo on the command line reads clearly.
"""
from __future__ import annotations

import inspect
from typing import Callable, Mapping


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: a MemoryError, or the RuntimeError of torch's CPU
    and CUDA allocators ("can't allocate memory", "Tried to allocate")."""
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "allocate" in str(error))


def check_int(name: str, value, minimum: int = 1) -> int:
    """An int (not a bool) that is at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}={value} is not allowed; {name} must be >= {minimum}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_real(name: str, value, low: float, high: float, high_inclusive: bool = False) -> float:
    """A real number in [low, high) (or [low, high] when `high_inclusive`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    above = value > high if high_inclusive else value >= high
    if not value >= low or above:  # `not >=` also rejects NaN
        closing = "]" if high_inclusive else ")"
        raise ValueError(f"{name}={value} is not allowed; {name} must lie in [{low}, {high}{closing}")
    return float(value)


def check_choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


def call_by_name(kind: str, table: Mapping[str, Callable], name: str, options: Mapping):
    """Call `table[name](**options)` after checking the name and the option names.

    `kind` names what is being built ("network", "dataset") in the error messages; the allowed
    options are read from the callable's signature.
    """
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, got {type(name).__name__} {name!r}")
    key = name.lower()
    if key not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(map(repr, table))}")
    factory = table[key]
    allowed = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {kind} {key!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    return factory(**options)
