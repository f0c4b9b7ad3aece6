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
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from .order import ORDER_TILE, call_key, chunk_order, MASK32
from .reduction import GRANULARITIES, SEED_LIMIT

ALLREDUCE_MODES = ("native", "fixed", "splitk")


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

    def to_dict(self) -> dict:
        return asdict(self)


def order_indices(positions: torch.Tensor, granularity: str) -> torch.Tensor:
    """kernels.order's order index of each position of a (1, P) output."""
    if granularity == "call":
        return torch.zeros_like(positions)
    if granularity == "tile":
        return positions // ORDER_TILE
    return positions & MASK32


def ordered_mean(stack: torch.Tensor, spec: AllReduce, call: int = 0,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over dim 0 of (R, n) `stack`: rows added left to right in `spec`'s order, then / R.

    `positions` (n,) are the elements' positions in the flat parameter vector (default
    0..n-1); only splitk reads them, together with `call`.
    """
    if spec.mode == "native":
        raise ValueError("allreduce mode 'native' has no order of its own; ordered_mean needs 'fixed' or 'splitk'")
    ranks = stack.shape[0]
    if spec.mode == "splitk" and ranks > 1:
        if positions is None:
            positions = torch.arange(stack.shape[1], dtype=torch.int64, device=stack.device)
        order = chunk_order(call_key(spec.seed, call), order_indices(positions, spec.granularity), ranks)
        stack = torch.gather(stack, 0, order)
    total = stack[0].clone()
    for row in stack[1:]:
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

    def positions(self, bucket) -> torch.Tensor:
        """Each bucket element's position in the flat parameter vector (padding reads 0)."""
        buffer = bucket.buffer()
        positions = torch.zeros(buffer.numel(), dtype=torch.int64, device=buffer.device)
        for parameter, grad in zip(bucket.parameters(), bucket.gradients()):
            start = grad.storage_offset() - buffer.storage_offset()
            first = self.offsets[id(parameter)]
            positions[start:start + grad.numel()] = torch.arange(first, first + grad.numel(), device=buffer.device)
        return positions


def ordered_allreduce_hook(state: OrderedAllReduce, bucket):
    """DDP hook: all_to_all the shards, ordered mean of this rank's shard, all_gather.

    Returns a completed Future of the averaged bucket (no annotations: DDP checks them
    literally, and this module's annotations are strings).
    """
    group, buffer = state.group, bucket.buffer()
    ranks, rank, size = group.size(), group.rank(), buffer.numel()
    shard = -(-size // ranks)
    send = buffer.new_zeros(ranks * shard)
    send[:size] = buffer.flatten()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    positions = None
    if state.spec.mode == "splitk":
        positions = torch.zeros_like(send, dtype=torch.int64)
        positions[:size] = state.positions(bucket)
        positions = positions[rank * shard:(rank + 1) * shard]
    mine = ordered_mean(received.view(ranks, shard), state.spec, state.calls, positions)
    dist.all_gather_single(send, mine, group=group)
    if bucket.is_last():
        state.calls += 1
    future = torch.futures.Future()
    future.set_result(send[:size].view_as(buffer))
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
