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
itself) reproduces it in one process from R stacked micro-batch gradients.

The hook runs its collectives synchronously: on gloo the ordered modes do not overlap
communication with the rest of the backward pass; on NCCL the work is stream-ordered anyway.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import order_cpu
from .order import MASK32, ORDER_TILE, call_key, chunk_order
from .reduction import GRANULARITIES, SEED_LIMIT

ALLREDUCE_MODES = ("native", "fixed", "splitk")
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


def ordered_mean(stack: torch.Tensor, spec: AllReduce, call: int = 0, start: int = 0) -> torch.Tensor:
    """Mean over dim 0 of (R, n) `stack`: rows added left to right in `spec`'s order, then / R.

    The n columns are positions start, start + 1, ... of the flat parameter vector; splitk orders
    each by its position and `call`. Long CPU fp32/fp64 splitk sums take kernels.order_cpu's
    compiled pass (the same order and additions, without materialising the orders).
    """
    if spec.mode == "native":
        raise ValueError("allreduce mode 'native' has no order of its own; ordered_mean needs 'fixed' or 'splitk'")
    ranks, n = stack.shape
    if spec.mode == "splitk" and ranks > 1:
        key = call_key(spec.seed, call)
        if stack.device.type == "cpu" and stack.dtype in order_cpu.SUMMABLE_DTYPES and n >= COMPILED_MIN_ELEMENTS:
            # an (n, 1) output whose first row is `start`: element e's order index is start + e
            summed = torch.empty(n, 1, 1, dtype=stack.dtype)
            order = order_cpu.BlockOrder(ranks, key, spec.granularity, n_total=1)
            place = order_cpu.Placement(rows=(start, 1, 0, 0), cols=(0, 0, 0, 0))
            order_cpu.reduce_block(stack.reshape(ranks, n, 1, 1), summed, order, place)
            return summed.view(n).div_(ranks)
        positions = torch.arange(start, start + n, dtype=torch.int64, device=stack.device)
        stack = torch.gather(stack, 0, chunk_order(key, order_indices(positions, spec.granularity), ranks))
    total = stack[0] + stack[1] if ranks > 1 else stack[0].clone()
    for row in stack[2:]:
        total += row
    return total.div_(ranks)


class OrderedAllReduce:
    """State of the ordered hook: spec, process group, parameter offsets, all-reduce number."""

    def __init__(self, spec: AllReduce, parameters, group=None):
        self.spec, self.group = spec, group if group is not None else dist.group.WORLD
        self.offsets, total = {}, 0
        for parameter in parameters:
            if parameter.requires_grad:
                self.offsets[id(parameter)] = total
                total += parameter.numel()
        self.calls = 0
        self.scratch = {}

    def buffer(self, name: str, bucket, numel: int) -> torch.Tensor:
        """A work buffer of this bucket, kept from step to step (fresh memory costs page faults)."""
        like = bucket.buffer()
        kept = self.scratch.get((name, bucket.index()))
        if kept is None or kept.numel() != numel or kept.dtype != like.dtype or kept.device != like.device:
            kept = self.scratch[name, bucket.index()] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return kept

    def reduce(self, pieces: torch.Tensor, bucket, first: int) -> torch.Tensor:
        """Ordered mean of the (R, shard) copies of bucket elements first, first + 1, ...

        splitk reduces gradient by gradient, each at its position in the flat parameter vector.
        """
        if self.spec.mode == "fixed":
            return ordered_mean(pieces, self.spec)
        mean, last, buffer = torch.zeros_like(pieces[0]), first + pieces.shape[1], bucket.buffer()
        for parameter, grad in zip(bucket.parameters(), bucket.gradients()):
            offset = grad.storage_offset() - buffer.storage_offset()
            low, high = max(offset, first), min(offset + grad.numel(), last)
            if low < high:
                position = self.offsets[id(parameter)] + low - offset
                mean[low - first:high - first] = ordered_mean(pieces[:, low - first:high - first], self.spec,
                                                              self.calls, position)
        return mean


def ordered_allreduce_hook(state: OrderedAllReduce, bucket):
    """DDP hook: all_to_all the shards, ordered mean of this rank's shard, all_gather.

    Returns a completed Future of the averaged bucket (no annotations: DDP checks them
    literally, and this module's annotations are strings).
    """
    group, buffer = state.group, bucket.buffer()
    ranks, rank, size = group.size(), group.rank(), buffer.numel()
    shard = -(-size // ranks)
    flat = buffer.view(-1)
    send = flat if size == ranks * shard else state.buffer("send", bucket, ranks * shard)
    if send is not flat:
        send[:size].copy_(flat)
        send[size:].zero_()
    received = state.buffer("received", bucket, ranks * shard)
    dist.all_to_all_single(received, send, group=group)
    mine = state.reduce(received.view(ranks, shard), bucket, rank * shard)
    dist.all_gather_single(send, mine, group=group)
    if send is not flat:
        flat.copy_(send[:size])
    if bucket.is_last():
        state.calls += 1
    future = torch.futures.Future()
    future.set_result(buffer)
    return future


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
