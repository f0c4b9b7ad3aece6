"""The gradient all-reduce as one more dialled reduction, as DDP communication hooks.

Modes (`AllReduce.mode`):
  native  the backend's all_reduce, DDP's default hook: each rank divides by the world size R,
          then the collective sums in its own order, which depends on the algorithm (ring,
          tree, ...), the message size and the topology.
  fixed   every element's R rank values are added left to right in rank order,
          ((g0 + g1) + g2) + ..., and the sum is divided by R.
  splitk  the same, in a seeded pseudo-random order of the ranks: kernels.order with the R
          ranks as the R chunks, the all-reduce number as the call number and, as order
          index, the element's position in the flat vector of the model's parameters read
          as a (1, P) output (granularity "element": the position; "tile": position // 64;
          "call": 0).

The ordered modes move data only with all_to_all and all_gather, which copy bits: each rank
receives all R copies of one 1/R shard of the bucket, sums them in the prescribed order,
divides by R, and the shards are gathered back (the traffic of a ring all-reduce). The result
depends on nothing but the R values and the element's position, so not on the collective
algorithm, the message size or DDP's bucket layout, and `ordered_mean` (the arithmetic
itself) reproduces it in one process from R stacked micro-batch gradients. Two values add to
the same bits in either order, so with R = 2 splitk sums as fixed does (NaN payloads aside).

The hook is asynchronous, as DDP's default is: it starts the all_to_all and returns; the sum
runs when the shards arrive (a Future callback, on the backend's thread) and starts the
all_gather, whose completion completes the bucket. Collectives pair up across ranks by the
order in which they are issued on a process group, so the all_to_alls (issued by DDP's
thread, in bucket order) and the all_gathers (issued from callbacks, put back into bucket
order) go to two process groups.
"""
from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from . import order_cpu
from .order import MASK32, ORDER_TILE, call_key, chunk_order
from .reduction import GRANULARITIES, SEED_LIMIT

ALLREDUCE_MODES = ("native", "fixed", "splitk")
# torch 2.13 renamed these two collectives and made the old names warn; older torch (the GPU
# machine's 2.11) has only the old ones. Same arguments, same results.
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
# Below this many elements the compiled CPU pass costs more (a fixed ~15 ms a call) than torch's ops.
COMPILED_MIN_ELEMENTS = 1 << 14


@dataclass(frozen=True)
class AllReduce:
    """How the ranks' gradients are summed: mode, and for splitk the seed and granularity."""

    mode: str = "native"
    seed: int = 0
    granularity: str = "element"

    def __post_init__(self):
        for name, value, allowed in (("allreduce mode", self.mode, ALLREDUCE_MODES),
                                     ("allreduce granularity", self.granularity, GRANULARITIES)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"allreduce seed={self.seed!r} is not allowed; it must be an int in [0, 2**32)")


def order_indices(positions: torch.Tensor, granularity: str) -> torch.Tensor:
    """kernels.order's order index of each position of a (1, P) output."""
    if granularity == "call":
        return torch.zeros_like(positions)
    if granularity == "tile":
        return positions // ORDER_TILE
    return positions & MASK32


def seeded(spec: AllReduce, ranks: int) -> bool:
    """Whether `spec` adds `ranks` values in a seeded order that can show in the bits (from 3 on)."""
    return spec.mode == "splitk" and ranks > 2


def ordered_mean(stack: torch.Tensor, spec: AllReduce, call: int = 0, start: int = 0,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over dim 0 of (R, n) `stack`: rows added left to right in `spec`'s order, then / R.

    The n columns are positions start, start + 1, ... of the flat parameter vector; splitk orders
    each by its position and `call`. Long CPU fp32/fp64 splitk sums take kernels.order_cpu's
    compiled pass (the same order and additions, without materialising the orders). Written
    into `out` (n elements) when given.
    """
    if spec.mode == "native":
        raise ValueError("allreduce mode 'native' has no order of its own; ordered_mean needs 'fixed' or 'splitk'")
    ranks, n = stack.shape
    total = torch.empty(n, dtype=stack.dtype, device=stack.device) if out is None else out
    if seeded(spec, ranks):
        key = call_key(spec.seed, call)
        if stack.device.type == "cpu" and stack.dtype in order_cpu.SUMMABLE_DTYPES and n >= COMPILED_MIN_ELEMENTS:
            # an (n, 1) output whose first row is `start`: element e's order index is start + e
            order = order_cpu.BlockOrder(ranks, key, spec.granularity, n_total=1)
            place = order_cpu.Placement(rows=(start, 1, 0, 0), cols=(0, 0, 0, 0))
            order_cpu.reduce_block(stack.reshape(ranks, n, 1, 1), total.view(n, 1, 1), order, place)
            return total.div_(ranks)
        positions = torch.arange(start, start + n, dtype=torch.int64, device=stack.device)
        stack = torch.gather(stack, 0, chunk_order(key, order_indices(positions, spec.granularity), ranks))
    if ranks == 1:
        total.copy_(stack[0])
    else:
        torch.add(stack[0], stack[1], out=total)
    for row in stack[2:]:
        total += row
    return total.div_(ranks)


class OrderedAllReduce:
    """State of the ordered hook: spec, process groups, parameter offsets, all-reduce number, and
    the all_gathers waiting for their turn."""

    def __init__(self, spec: AllReduce, parameters, group=None):
        self.spec, self.group = spec, group if group is not None else dist.group.WORLD
        self.gather_group = dist.new_group(dist.get_process_group_ranks(self.group))
        self.offsets, total = {}, 0
        for parameter in parameters:
            if parameter.requires_grad:
                self.offsets[id(parameter)] = total
                total += parameter.numel()
        self.calls = 0
        self.scratch = {}
        self.lock, self.waiting, self.next_bucket = threading.Lock(), {}, 0

    def buffer(self, name: str, bucket, numel: int) -> torch.Tensor:
        """A work buffer of this bucket, kept from step to step (fresh memory costs page faults)."""
        like = bucket.buffer()
        kept = self.scratch.get((name, bucket.index()))
        if kept is None or kept.numel() != numel or kept.dtype != like.dtype or kept.device != like.device:
            kept = self.scratch[name, bucket.index()] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return kept

    def reduce(self, pieces: torch.Tensor, bucket, first: int, call: int, out: torch.Tensor) -> torch.Tensor:
        """Ordered mean of the (R, shard) copies of bucket elements first, first + 1, ... into `out`.

        A seeded order goes gradient by gradient, each at its position in the flat parameter vector.
        """
        if not seeded(self.spec, pieces.shape[0]):
            return ordered_mean(pieces, self.spec, out=out)
        out.zero_()
        last, buffer = first + pieces.shape[1], bucket.buffer()
        for parameter, grad in zip(bucket.parameters(), bucket.gradients()):
            offset = grad.storage_offset() - buffer.storage_offset()
            low, high = max(offset, first), min(offset + grad.numel(), last)
            if low < high:
                position = self.offsets[id(parameter)] + low - offset
                ordered_mean(pieces[:, low - first:high - first], self.spec, call, position,
                             out=out[low - first:high - first])
        return out

    def in_turn(self, index: int, last: bool, start) -> None:
        """Call `start` (which issues bucket `index`'s all_gather) once buckets 0 .. index - 1 have
        issued theirs: every rank issues them in bucket order, whatever order the sums end in."""
        with self.lock:
            self.waiting[index] = start, last
            while self.next_bucket in self.waiting:
                start, last = self.waiting.pop(self.next_bucket)
                start()
                self.next_bucket = 0 if last else self.next_bucket + 1


def settling(future: torch.futures.Future, action):
    """`action` as a callback that hands an exception it raises to `future` (DDP raises it in backward)."""
    def run(*args):
        try:
            action(*args)
        except Exception as error:  # noqa: BLE001 - handed on, not swallowed
            future.set_exception(error)
    return run


def ordered_allreduce_hook(state: OrderedAllReduce, bucket):
    """DDP hook: all_to_all the shards; when they arrive, the ordered mean of this rank's shard,
    then all_gather. Returns the Future of the averaged bucket (no annotations: DDP checks them
    literally, and this module's annotations are strings)."""
    group, buffer, call, index, last = state.group, bucket.buffer(), state.calls, bucket.index(), bucket.is_last()
    ranks, rank, size = group.size(), group.rank(), buffer.numel()
    shard = -(-size // ranks)
    flat = buffer.view(-1)
    send = flat if size == ranks * shard else state.buffer("send", bucket, ranks * shard)
    if send is not flat:
        send[:size].copy_(flat)
        send[size:].zero_()
    received, mine = state.buffer("received", bucket, ranks * shard), state.buffer("mine", bucket, shard)
    if last:
        state.calls += 1
    averaged = torch.futures.Future()

    def gathered(done):
        done.wait()
        if send is not flat:
            flat.copy_(send[:size])
        averaged.set_result(buffer)

    def gather():
        work = all_gather_single(send, mine, group=state.gather_group, async_op=True)
        work.get_future().then(settling(averaged, gathered))

    def arrived(done):
        try:
            done.wait()
            state.reduce(received.view(ranks, shard), bucket, rank * shard, call, mine)
            start = settling(averaged, gather)
        except Exception as error:  # noqa: BLE001 - handed to DDP, which raises it in backward
            start = partial(averaged.set_exception, error)
        state.in_turn(index, last, start)

    dist.all_to_all_single(received, send, group=group, async_op=True).get_future().then(arrived)
    return averaged


def attach(model, spec: AllReduce, group=None) -> OrderedAllReduce | None:
    """Give a DistributedDataParallel model `spec`'s all-reduce; None for native (DDP's default)."""
    if spec.mode == "native":
        return None
    state = OrderedAllReduce(spec, model.module.parameters(), group)
    model.register_comm_hook(state, ordered_allreduce_hook)
    return state


def close_process_group(wait: bool = True) -> None:
    """End the default process group so that a finished process exits with its own status.

    A process group still referenced at interpreter shutdown (by a DDP model, its reducer or a
    hook state) is destroyed during finalization, while gloo's worker threads may still hold
    work: the process then aborts ("terminate called without an active exception", SIGABRT).
    Callers drop their references first; this collects what is left, waits for every rank
    (unless `wait` is False: a failing rank cannot count on the others) and destroys the group
    while the interpreter is fully alive.
    """
    gc.collect()
    if wait:
        dist.barrier()
    dist.destroy_process_group()
