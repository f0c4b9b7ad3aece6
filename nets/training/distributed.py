"""Data-parallel training: R ranks under torchrun, or the same R shards as micro-batches in one process.

Under `torchrun --nproc_per_node=R tools/run.py ...` every rank builds the same run and trains
shard r of every global batch (`--batch-size` examples cut into R equal pieces, in order);
DistributedDataParallel averages the gradients with the all-reduce `--allreduce` names
(kernels.allreduce: native, fixed, splitk; seed and granularity those of the kernels).
BatchNorm keeps per-rank statistics unless `--sync-bn` (CUDA only: torch's SyncBatchNorm);
DDP broadcasts rank 0's buffers before every forward, so the running statistics are rank 0's.
Rank 0 alone writes the run directory; the other ranks read it to resume.

`--micro-batches R` replays an R-rank run in one process: shard r runs its forward and backward
from the call counter and random state every rank starts the step with, the R gradients are
averaged by kernels.allreduce.ordered_mean (the hooks' own arithmetic, in the same order), and
micro-batch 0's running statistics, random state and call counter are kept, as rank 0's are.
With fixed kernels and `--allreduce fixed` the weights and metrics are those of the R-rank run,
bit for bit. The step's loss is the shards' mean losses added in rank order and divided by R:
under torchrun every rank computes it from every rank's loss, so a loss that turns non-finite on
one rank stops all of them at that step, with the same message.

An epoch's last, smaller batch is dropped when R shards do not divide it.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import probes
from kernels.allreduce import AllReduce, all_gather_single, attach, close_process_group, ordered_mean

from .checkpoint import capture_rng, restore_rng
from .numerics import autocast
from .rundir import RunDir, RunDirError
from .step import forward_backward, optimizer_step, train_step

TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place in the run: its rank, the number of ranks, its rank on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_world() -> World:
    """The world torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK (one process without them)."""
    return World(*(int(os.environ.get(name, default)) for name, default in
                   (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))))


def current_world() -> World:
    """The world of the joined process group (one process when there is none)."""
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def join(world: World) -> None:
    """Join the run's process group (nothing for one process): gloo for CPU tensors, NCCL for CUDA
    tensors, rank r on cuda:LOCAL_RANK."""
    if world.size == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)


def leave(wait: bool = True) -> None:
    """Leave the process group so that the process exits cleanly (kernels.allreduce.close_process_group)."""
    if dist.is_initialized():
        close_process_group(wait)


def stop_together(world: World) -> None:
    """After a run stopped early on every rank at the same step (a non-finite loss: every rank sees
    all ranks' losses, RankSteps.step), wait until rank 0 has written the run's last files: the
    first rank to exit makes torchrun terminate the others."""
    if world.size > 1:
        dist.barrier()


def _gather(world: World, value) -> list:
    if world.size == 1:
        return [value]
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def check_same_run(world: World, argv: list, options: dict) -> None:
    """Refuse ranks started with another command line, or whose options resolved differently."""
    for rank, (other_argv, other) in enumerate(_gather(world, (argv, options))):
        if other_argv != argv:
            raise ValueError(f"rank {rank} was started with {other_argv} and rank {world.rank} with {argv}; "
                             "every rank must run the same command")
        differ = [f"{name}={other[name]!r} (rank {world.rank}: {value!r})" for name, value in options.items()
                  if other.get(name) != value]
        if differ:
            raise ValueError(f"rank {rank} resolved other options: {', '.join(differ)}")


def check_resume_world(derived: dict, world: World, path) -> None:
    """Refuse to resume a run on another number of ranks than it was trained on."""
    trained = derived.get("world_size", 1)
    if trained != world.size:
        raise ValueError(f"{path} was trained on {trained} rank(s) and this launch has {world.size}; resume it with "
                         f"torchrun --nproc_per_node={trained} (or without torchrun when it is 1)")


def shards_of(config, world: World, device: torch.device) -> int:
    """How many shards a batch is cut into (ranks or micro-batches), refusing what cannot run."""
    micro = config.micro_batches
    if world.size > 1 and device.type == "cuda" and device.index is not None:
        raise ValueError(f"--device={device} names one GPU for every rank; under torchrun give --device cuda "
                         "(rank r uses cuda:LOCAL_RANK)")
    if micro > 1 and world.size > 1:
        raise ValueError("--micro-batches replays R ranks in one process; under torchrun every rank is one shard "
                         "already: drop --micro-batches or launch one process")
    if micro > 1 and config.allreduce == "native":
        raise ValueError("--micro-batches needs --allreduce fixed or splitk: native has no order that one process "
                         "can follow")
    if config.sync_bn and (micro > 1 or (world.size > 1 and device.type != "cuda")):
        raise ValueError("--sync-bn needs CUDA ranks under torchrun (torch's SyncBatchNorm runs on GPUs only "
                         "and cannot be replayed by --micro-batches)")
    shards = world.size * micro
    if config.batch_size % shards:
        raise ValueError(f"--batch-size={config.batch_size} does not split into {shards} equal shards "
                         f"({world.size} rank(s) x {micro} micro-batch(es)); choose a multiple of {shards}")
    return shards


def batch_plan(train_size: int, batch_size: int, shards: int) -> tuple[bool, int]:
    """(drop the epoch's last batch, smallest shard trained): the last batch goes when shards do not divide it."""
    rest = train_size % batch_size
    if rest and rest % shards == 0:
        return False, rest // shards
    return bool(rest), batch_size // shards


def ranks_record(world: World, device: torch.device) -> dict:
    """env.json's "ranks" under torchrun: every rank's host, process, device and device record (NVML per
    GPU), which says which GPUs produced the run; empty for one process (device_start says it)."""
    if world.size == 1:
        return {}
    record = {"rank": world.rank, "local_rank": world.local_rank, "host": socket.gethostname(), "pid": os.getpid(),
              "device": "cpu"}
    if device.type == "cuda":
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        record.update(device=f"cuda:{index}", gpu_name=props.name, gpu_uuid=str(props.uuid))
    record["device_record"] = probes.device_info()
    return {"ranks": _gather(world, record)}


class RankRunDir(RunDir):
    """The run directory as ranks other than 0 see it: read (to resume), never written."""

    def write_json(self, name: str, value) -> None:
        pass

    def write_jsonl(self, name: str, records) -> None:
        pass

    def append_jsonl(self, name: str, record: dict) -> None:
        pass

    def save_torch(self, name: str, value) -> None:
        pass


def shared_run_dir(world: World, prepare) -> RunDir:
    """Rank 0 prepares the run directory (`prepare()`); the others receive its path, or its error."""
    if world.size == 1:
        return prepare()
    message = [None, None]
    if world.main:
        try:
            message = [str(prepare().path), None]
        except RunDirError as error:
            message = [None, str(error)]
    dist.broadcast_object_list(message, src=0)
    path, error = message
    if error is not None:
        raise RunDirError(error)
    return RunDir(path) if world.main else RankRunDir(path)


def _shard(tensor: torch.Tensor, index: int, count: int) -> torch.Tensor:
    return tensor.chunk(count)[index]


def _combine(results) -> tuple[float, int]:
    """Shards' (mean loss, correct) pairs: losses added in rank order and divided by their number."""
    total = 0.0
    for loss, _ in results:
        total += loss
    return total / len(results), int(sum(correct for _, correct in results))


def _result(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    return loss.item(), int((logits.argmax(dim=1) == labels).sum())


class Steps:
    """One training step of a run: on the whole batch, this rank's shard, or R micro-batches."""

    def __init__(self, training):
        self.training = training
        self.autocast = lambda: autocast(training.numerics, training.device)

    def step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> tuple[float, int]:
        """Train one step; (the step's loss, correct predictions) over the whole batch."""
        t = self.training
        loss, logits = train_step(t.model, t.optimizer, images, labels, t.scaler, self.autocast)
        return _result(loss, logits, labels)


class RankSteps(Steps):
    """This rank's shard through DistributedDataParallel, with the run's all-reduce."""

    def __init__(self, training, world: World, spec: AllReduce):
        super().__init__(training)
        self.world = world
        model = training.model
        if training.config.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        cuda = training.device.type == "cuda"
        self.model = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if cuda else None)
        self.hook = attach(self.model, spec)

    def step(self, images, labels, step):
        """Every rank returns the same loss, all ranks' losses added in rank order: one that is
        non-finite on any rank (NaN or infinite) makes it non-finite, so every rank stops there."""
        t, world = self.training, self.world
        if self.hook is not None:
            self.hook.calls = step
        labels = _shard(labels, world.rank, world.size)
        loss, logits = train_step(self.model, t.optimizer, _shard(images, world.rank, world.size), labels,
                                  t.scaler, self.autocast)
        mine = torch.tensor(_result(loss, logits, labels), dtype=torch.float64, device=t.device)
        everyone = torch.empty(2 * world.size, dtype=torch.float64, device=t.device)
        all_gather_single(everyone, mine)
        return _combine(everyone.view(world.size, 2).tolist())


class MicroSteps(Steps):
    """R micro-batches in one process, reproducing an R-rank run with an ordered all-reduce."""

    def __init__(self, training, micro: int, spec: AllReduce):
        super().__init__(training)
        self.micro, self.spec = micro, spec
        self.parameters = [p for p in training.model.parameters() if p.requires_grad]

    def step(self, images, labels, step):
        t, micro = self.training, self.micro
        start_call, start_rng = t.counter.next_call, capture_rng(t.device)
        results, grads = [], []
        for index in range(micro):
            t.counter.reset(start_call)
            restore_rng(start_rng, t.device)
            t.optimizer.zero_grad(set_to_none=True)
            shard_labels = _shard(labels, index, micro)
            loss, logits = forward_backward(t.model, _shard(images, index, micro), shard_labels, t.scaler,
                                            self.autocast)
            results.append(_result(loss, logits, shard_labels))
            grads.append(torch.cat([p.grad.flatten() for p in self.parameters]))
            if index == 0:
                kept = ([b.clone() for b in t.model.buffers()], capture_rng(t.device), t.counter.next_call)
        buffers, rng, call = kept
        for buffer, saved in zip(t.model.buffers(), buffers):
            buffer.copy_(saved)
        restore_rng(rng, t.device)
        t.counter.reset(call)
        mean = ordered_mean(torch.stack(grads), self.spec, step)
        for parameter, grad in zip(self.parameters, mean.split([p.numel() for p in self.parameters])):
            parameter.grad = grad.view_as(parameter)
        optimizer_step(t.optimizer, t.scaler)
        return _combine(results)


def make_steps(training, world: World) -> Steps:
    """The step of `training`'s run in this world."""
    config = training.config
    spec = AllReduce(config.allreduce, seed=config.noise_seed, granularity=config.granularity)
    if world.size > 1:
        return RankSteps(training, world, spec)
    if config.micro_batches > 1:
        return MicroSteps(training, config.micro_batches, spec)
    return Steps(training)
