"""Ctrl-C (or SIGTERM, as a batch scheduler sends) during training: finish the current step, save
a checkpoint, stop cleanly.

The first SIGINT only raises a flag that the training loop reads between steps, so the
checkpoint it then writes is a consistent step boundary; a second SIGINT aborts at once
(KeyboardInterrupt), leaving the previous checkpoint in place.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable


class InterruptFlag:
    """Set by the first SIGINT; `requested` is read by the loop between steps."""

    def __init__(self, echo: Callable[[str], None]):
        self.requested = False
        self._echo = echo

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._echo("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort without saving)")


@contextmanager
def deferred_interrupt(echo: Callable[[str], None]):
    """Install the SIGINT and SIGTERM handler for the block (only possible, and only needed, in the main thread)."""
    flag = InterruptFlag(echo)
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {number: signal.signal(number, flag.handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
