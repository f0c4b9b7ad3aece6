"""Single-threaded torch workers that run the emulate backend's blocks of work in parallel.

torch's CPU kernels (MKL's GEMM, oneDNN's convolutions) pick their summation order by the
number of threads they run on: a (64, 4096) @ (4096, 144) product on two threads splits K
between them. The emulate backend therefore cuts every reduction into blocks whose shapes
depend on the problem alone, and runs each block as single-threaded torch calls on one of
these workers. How many workers there are, and which block lands on which, then changes no
element's order: the bits are the same on 1, 2 or 4 threads.

The calling thread is one of the workers, with torch set to one thread for the while; a call
of at most INLINE_BLOCKS blocks (the small layers) runs them in the caller alone: the same
single-threaded calls, so the same bits.

Each worker sets torch's intra-op threads to 1 for itself (OpenMP's and MKL's settings are
per thread); torch also keeps that number as the default for threads started later, so the
caller's setting is put back as the default once the workers run. A caller whose torch runs
on one thread already does the blocks itself. A forked child starts a pool of its own. Blocks
run with torch's CPU matmuls and convolutions in IEEE fp32, whatever torch is set to otherwise
(torch.set_float32_matmul_precision("medium") would let them round fp32 operands to bf16).
Each thread keeps scratch memory for what its blocks write and read before they end (`scratch`).

Blocks run their Python on the workers in turn, under the GIL. Every torch view, transpose or
allocation with a shape releases the GIL and takes it back, and taking it back waits while
another worker runs Python: two blocks of the quick net's split-K convolutions, some 20 such
calls each, ran 1.3-2.5x slower side by side than alone. Inside a block, tensors are therefore
shaped (`shaped`) and allocated by numpy, which keeps the GIL, and converted only where the dtype
changes (`in_dtype`), so that a block lets it go only for its compiled loops and its matmuls or
convolutions (side by side, 1.0-1.3x).
"""
from __future__ import annotations

import contextvars
import functools
import os
import queue
import threading
from typing import Callable, Sequence

import numpy as np
import torch


class _Pool:
    """Daemon threads, each running torch on one thread, taking tasks from one queue."""

    def __init__(self):
        self.pid = os.getpid()
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.size = 0
        self.lock = threading.Lock()

    def grow(self, size: int) -> None:
        with self.lock:
            if size <= self.size:
                return
            caller_threads = torch.get_num_threads()
            started = threading.Barrier(size - self.size + 1)
            for _ in range(size - self.size):
                threading.Thread(target=self._serve, args=(started,), daemon=True, name="emulate-worker").start()
            started.wait()
            torch.set_num_threads(caller_threads)
            self.size = size

    def _serve(self, started: threading.Barrier) -> None:
        torch.get_num_threads()  # torch's lazy per-thread set-up, which would later reset the 1 below
        torch.set_num_threads(1)
        torch.set_grad_enabled(False)  # blocks compute values; autograd happens around the op
        started.wait()
        while True:
            task = self.tasks.get()
            task()


# Up to this many blocks run in the caller, on one thread: handing a lone block to a worker only
# adds the hand-off, and torch's own threads, idling after the caller's last parallel op, then
# compete with the worker for the cores.
INLINE_BLOCKS = 1
_POOL: _Pool | None = None
# Set by threads_to_workers: the workers' count while the caller's torch runs on one thread.
_WORKERS: contextvars.ContextVar[int | None] = contextvars.ContextVar("emulate_workers", default=None)
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool()
        return _POOL


class ieee_fp32:
    """torch's oneDNN matmul and convolution settings at IEEE fp32 for the block, then as they were."""

    __slots__ = ("changed",)

    def __enter__(self):
        settings = (torch.backends.mkldnn.matmul, torch.backends.mkldnn.conv)
        self.changed = [(setting, precision) for setting in settings
                        if (precision := setting.fp32_precision) not in ("none", "ieee")]
        for setting, _ in self.changed:
            setting.fp32_precision = "ieee"

    def __exit__(self, *exc):
        for setting, precision in self.changed:
            setting.fp32_precision = precision


class one_thread:
    """torch on one thread in the calling thread for the block, then as many as before: for
    results whose bits must not depend on the thread count."""

    __slots__ = ("threads",)

    def __enter__(self):
        self.threads = torch.get_num_threads()
        if self.threads != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.threads != 1:
            torch.set_num_threads(self.threads)


class threads_to_workers:
    """For the block, torch's threads in the caller go to the workers: torch runs on one thread
    there and blocks of work on as many workers as it had threads (the same bits either way).

    On a few cores this is the faster split for emulated training: each of torch's parallel ops
    in the caller leaves OpenMP's threads spinning for a while, competing with the workers for
    the cores, while the ops between the emulated reductions of a small network gain little
    from more threads. Inside a block already handed over (a training step's, around each op's)
    it costs next to nothing.
    """

    __slots__ = ("token", "threads")

    def __enter__(self):
        self.threads = torch.get_num_threads()
        if self.threads == 1 and _WORKERS.get() is not None:  # handed over already
            self.token = None
            return
        self.token = _WORKERS.set(_WORKERS.get() or self.threads)
        if self.threads != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.token is None:
            return
        if self.threads != 1:
            torch.set_num_threads(self.threads)
        _WORKERS.reset(self.token)


def run_blocks(blocks: Sequence[Callable[[], None]]) -> None:
    """Run every block once, on as many single-threaded workers as torch has threads here (or
    had, before threads_to_workers handed them over), the calling thread being one of them.

    Blocks must write disjoint outputs; they are taken in list order by whichever worker is
    free. The first exception a block raises is raised here after all workers are done.
    """
    with ieee_fp32():
        _run(blocks)


def _run(blocks: Sequence[Callable[[], None]]) -> None:
    threads = _WORKERS.get() or torch.get_num_threads()
    if threads == 1 or len(blocks) <= INLINE_BLOCKS:
        with one_thread():
            for block in blocks:
                block()
        return
    helpers = min(threads, len(blocks)) - 1  # the caller is one of the workers
    pool = _pool()
    pool.grow(helpers)
    pending = iter(blocks)
    errors: list[BaseException] = []
    done = threading.Semaphore(0)

    def drain() -> None:
        try:
            for block in pending:
                block()
        except BaseException as error:  # handed to the caller
            errors.append(error)
            for _ in pending:
                pass
        finally:
            done.release()

    for _ in range(helpers):
        pool.tasks.put(drain)
    with one_thread():
        drain()
    for _ in range(helpers + 1):
        done.acquire()
    if errors:
        raise errors[0]


# A thread's scratch memory starts this far into its allocation: half a page from where fresh
# large tensors start, near a page boundary. A load whose address matches that of a recent store
# in its low 12 bits waits for it (4K aliasing): a batched matmul reading a fresh operand into
# scratch partials made the 32-chunk step 7 % slower without the shift.
SCRATCH_SHIFT_BYTES = 34 * 64


class _Scratch(threading.local):
    buffer: np.ndarray | None = None  # this thread's


_SCRATCH = _Scratch()


def scratch(nbytes: int) -> np.ndarray:
    """`nbytes` of this thread's scratch memory (uint8), for what a block of work writes and reads
    before it ends; valid until the thread's next call. The memory is kept for the thread's next
    block: fresh memory is paged in on first touch, which made a batched matmul into a fresh
    4 MiB buffer take 1.1 ms more than the 0.3 ms it took into a reused one."""
    if _SCRATCH.buffer is None or _SCRATCH.buffer.size < SCRATCH_SHIFT_BYTES + nbytes:
        _SCRATCH.buffer = None  # the smaller one freed before the larger is allocated
        # by torch's allocator, which starts it on a cache line (numpy's does not promise one)
        _SCRATCH.buffer = torch.empty(SCRATCH_SHIFT_BYTES + nbytes, dtype=torch.uint8).numpy()
    return _SCRATCH.buffer[SCRATCH_SHIFT_BYTES:SCRATCH_SHIFT_BYTES + nbytes]


def scratch_bytes() -> int:
    """The bytes of scratch memory this thread holds."""
    return 0 if _SCRATCH.buffer is None else _SCRATCH.buffer.size


def release_scratch() -> None:
    """Let this thread's scratch memory go (its next call allocates afresh)."""
    _SCRATCH.buffer = None


@functools.lru_cache(maxsize=None)
def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """numpy's dtype for torch's `dtype` (one that numpy has)."""
    return torch.empty(0, dtype=dtype).numpy().dtype


def in_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """tensor.to(dtype), without a torch call where it has that dtype already: .to lets the GIL
    go (see above) even when it has nothing to do."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def shaped(tensor: torch.Tensor, shape: tuple) -> torch.Tensor:
    """tensor.reshape(shape) for a CPU tensor outside autograd, of a dtype numpy has, without
    letting the GIL go (see above): a view where the strides allow one, else a copy."""
    return torch.from_numpy(tensor.numpy().reshape(shape))
