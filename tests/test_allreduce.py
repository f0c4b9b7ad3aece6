"""The gradient all-reduce as a reduction: ordered mean, DDP hooks on gloo, clean exit under torchrun."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from kernels.allreduce import AllReduce, attach, close_process_group, ordered_mean
from kernels.order import call_key, chunk_order

ROOT = Path(__file__).resolve().parents[1]


def spread(generator, *shape):
    """fp32 values over many binades, so that the order of additions shows in the last bits."""
    scale = torch.randint(-10, 10, shape, generator=generator).float().exp2()
    return torch.randn(*shape, generator=generator) * scale


def rank_order(stack, order):
    """Reference: for each column j, rows added in the order order[:, j], then / R."""
    total = stack[order[0], torch.arange(stack.shape[1])].clone()
    for row in order[1:]:
        total = total + stack[row, torch.arange(stack.shape[1])]
    return total / stack.shape[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "ring"}, "allreduce mode='ring' is not allowed; choose one of 'native', 'fixed', 'splitk'"),
    ({"granularity": "row"}, "allreduce granularity='row' is not allowed"),
    ({"seed": -1}, "allreduce seed=-1 is not allowed"),
    ({"seed": 1.5}, "allreduce seed=1.5 is not allowed"),
])
def test_bad_spec_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        AllReduce(**kwargs)


def test_fixed_adds_ranks_left_to_right(generator):
    stack = spread(generator, 4, 1000)
    expected = ((stack[0] + stack[1]) + stack[2]) + stack[3]
    got = ordered_mean(stack, AllReduce("fixed"))
    assert torch.equal(got, expected / 4)
    assert not torch.equal(got, ((stack[3] + stack[2]) + stack[1] + stack[0]) / 4), "order should show in the bits"


@pytest.mark.parametrize("dtype, n", [(torch.float32, 20_000), (torch.float32, 300), (torch.bfloat16, 300)],
                         ids=["compiled", "torch", "torch-bf16"])
@pytest.mark.parametrize("granularity", ["element", "tile", "call"])
def test_splitk_follows_the_kernels_order_function(generator, granularity, dtype, n):
    stack, spec = spread(generator, 5, n).to(dtype), AllReduce("splitk", seed=11, granularity=granularity)
    positions = torch.arange(1000, 1000 + n)
    index = {"element": positions, "tile": positions // 64, "call": torch.zeros(n, dtype=torch.long)}
    order = chunk_order(call_key(11, 7), index[granularity], 5)
    assert torch.equal(ordered_mean(stack, spec, call=7, start=1000), rank_order(stack, order))


def test_two_ranks_add_alike_in_either_order(generator):
    """With two ranks splitk takes the fixed sum: a + b and b + a are the same bits."""
    stack, n = spread(generator, 2, 20_000), 20_000
    order = chunk_order(call_key(11, 7), torch.arange(n), 2)
    assert 0 < int(order[0].sum()) < n, "both orders should occur"
    got = ordered_mean(stack, AllReduce("splitk", seed=11), call=7)
    assert torch.equal(got, rank_order(stack, order))
    assert torch.equal(got, ordered_mean(stack, AllReduce("fixed")))


def test_splitk_is_seeded_and_independent_of_the_slice(generator):
    stack = spread(generator, 3, 5000)
    spec = AllReduce("splitk", seed=4)
    full = ordered_mean(stack, spec, call=2)
    assert torch.equal(full, ordered_mean(stack, spec, call=2))
    assert not torch.equal(full, ordered_mean(stack, AllReduce("splitk", seed=5), call=2))
    assert not torch.equal(full, ordered_mean(stack, spec, call=3))
    part = ordered_mean(stack[:, 1234:4321], spec, call=2, start=1234)
    assert torch.equal(part, full[1234:4321])


def test_native_has_no_order_of_its_own():
    with pytest.raises(ValueError, match="allreduce mode 'native' has no order of its own"):
        ordered_mean(torch.zeros(2, 3), AllReduce("native"))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(37, 50), torch.nn.ReLU(), torch.nn.Linear(50, 13))


def _batch(rank, step):
    generator = torch.Generator().manual_seed(100 * step + rank)
    return spread(generator, 8, 37)


def _flat_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _hook_worker(rank, world_size, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    grads = {}
    for name, spec, cap in (("fixed", AllReduce("fixed"), 0.002), ("splitk", AllReduce("splitk", seed=3), 0.004),
                            ("splitk_one_bucket", AllReduce("splitk", seed=3), 25)):
        model = DistributedDataParallel(_model(), bucket_cap_mb=cap)
        state = attach(model, spec)
        for step in range(2):
            model.zero_grad()
            model(_batch(rank, step)).pow(2).sum().backward()
        grads[name] = (_flat_grads(model), state.calls)
        del model, state
    torch.save(grads, Path(folder) / f"{rank}.pt")
    close_process_group()


@pytest.mark.slow
def test_hooks_reduce_in_the_prescribed_order_whatever_the_buckets():
    """3 gloo ranks: DDP's gradients equal ordered_mean of the ranks' gradients, bit for bit."""
    world_size = 3
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_hook_worker, args=(world_size, folder), nprocs=world_size, start_method="spawn")
        results = [torch.load(Path(folder) / f"{rank}.pt") for rank in range(world_size)]
    model, per_rank = _model(), []
    for rank in range(world_size):
        model.zero_grad()
        model(_batch(rank, 1)).pow(2).sum().backward()
        per_rank.append(_flat_grads(model))
    stack = torch.stack(per_rank)
    for name, spec in (("fixed", AllReduce("fixed")), ("splitk", AllReduce("splitk", seed=3)),
                       ("splitk_one_bucket", AllReduce("splitk", seed=3))):
        expected = ordered_mean(stack, spec, call=1)
        for rank, result in enumerate(results):
            grads, calls = result[name]
            assert calls == 2, f"{name}: two steps should be two all-reduces, rank {rank} counted {calls}"
            assert torch.equal(grads, expected), f"{name}: rank {rank} differs from the rank-order reference"


TEARDOWN_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from kernels.allreduce import AllReduce, attach, close_process_group

def train():
    model = DistributedDataParallel(torch.nn.Linear(8, 4))
    attach(model, AllReduce("fixed"))
    for _ in range(3):
        model(torch.randn(4, 8)).sum().backward()

dist.init_process_group("gloo")
train()
close_process_group()
"""


@pytest.mark.slow
def test_finished_runs_exit_zero_under_torchrun(tmp_path):
    """The teardown holds: 5 torchrun launches of a gloo DDP script, every one exits 0."""
    script = tmp_path / "ddp.py"
    script.write_text(TEARDOWN_SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failures = []
    for launch in range(5):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script)], capture_output=True, text=True, env=env, timeout=300)
        if done.returncode != 0:
            failures.append(f"launch {launch}: exit {done.returncode}\n{done.stderr[-2000:]}")
    assert not failures, "\n".join(failures)
