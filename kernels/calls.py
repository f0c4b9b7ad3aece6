"""Call numbering for seeded reductions, so a sequence of splitk orders can be replayed.

Every splitk call takes the next number from the current `CallCounter`. The process has one
default counter; `counting()` installs another for a block of code (a context variable, so it
is per thread/task), and a call draws from the innermost block around it. A backward pass
draws from the block around its backward() call, as its roles run on that thread on the CPU;
torch runs a CUDA graph's backward on a device thread of its own, where the caller's context
variables are unset, so a backward role on a thread without a block draws from the innermost
block open in the process (the caller's, when one thread drives the training). A training run
saves `counter.state_dict()` with its checkpoint and restores it on resume, which replays the
exact same orders.
"""
from __future__ import annotations

import contextvars
import threading
from contextlib import contextmanager

import torch

from .checks import check_count
from .order import call_key


class CallCounter:
    """Hands out consecutive call numbers, from `start` (an int >= 0)."""

    def __init__(self, start: int = 0):
        self.reset(start)

    def take(self) -> int:
        number = self.next_call
        self.next_call += 1
        return number

    def reset(self, start: int = 0) -> None:
        check_count("start", start)
        self.next_call = start

    def state_dict(self) -> dict:
        return {"next_call": self.next_call}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "next_call" not in state:
            raise TypeError(f"state must be a dict from CallCounter.state_dict(), got {type(state).__name__}")
        check_count("state['next_call']", state["next_call"])
        self.next_call = state["next_call"]

    def __repr__(self) -> str:
        return f"CallCounter(next_call={self.next_call})"


_DEFAULT = CallCounter()
_CURRENT: contextvars.ContextVar[CallCounter] = contextvars.ContextVar("kernels_call_counter")
_OPEN: list[CallCounter] = []  # the counters of the counting() blocks open in the process, innermost last
_OPEN_LOCK = threading.Lock()  # threads open and close blocks in any order


def current_counter() -> CallCounter:
    """The counter seeded calls draw from right now: the innermost counting() block's on this
    thread; in a backward pass on a thread without one (torch's device thread), the innermost
    block's open in the process; else the process's default counter."""
    counter = _CURRENT.get(None)
    if counter is not None:
        return counter
    if torch._C._current_autograd_node() is not None:
        with _OPEN_LOCK:
            if _OPEN:
                return _OPEN[-1]
    return _DEFAULT


def reset_calls(start: int = 0) -> None:
    """Restart the current counter, so the next splitk call replays call number `start`."""
    current_counter().reset(start)


@contextmanager
def counting(counter: CallCounter | None = None):
    """Use `counter` (a fresh one by default) for every seeded call inside the block."""
    counter = counter if counter is not None else CallCounter()
    token = _CURRENT.set(counter)
    with _OPEN_LOCK:
        _OPEN.append(counter)
    try:
        yield counter
    finally:
        _CURRENT.reset(token)
        with _OPEN_LOCK:  # this block's entry, the last of this counter's: other threads' blocks interleave
            del _OPEN[len(_OPEN) - 1 - _OPEN[::-1].index(counter)]


def next_key(reduction) -> int:
    """The call key of `reduction`'s next seeded call (0, and no call number, for orders that need none)."""
    if not reduction.seeded:
        return 0
    return call_key(reduction.seed, current_counter().take())
