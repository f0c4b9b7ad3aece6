"""Data-parallel training under torchrun (gloo on CPU): R ranks against R micro-batches, resume, refusals."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_run_support import RUN_SCRIPT, TINY_ARGS, checkpoint, invoke, jsonl, without_times

# Ranks run with one thread each (torchrun's default); the one-process replay with two, as the
# emulated kernels and the symmetry records do not depend on the thread count.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
REPLAY_ENV = {**os.environ, "OMP_NUM_THREADS": "2"}
FIXED = ["--reduction", "fixed", "--allreduce", "fixed"]


def launch(args: list, ranks: int | None = None) -> subprocess.CompletedProcess:
    """tools/run.py with the tiny options: under torchrun with `ranks` ranks, else in one process."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks else []
    command = [sys.executable, *launcher, str(RUN_SCRIPT), *TINY_ARGS, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV if ranks else REPLAY_ENV, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def assert_same_run(a: Path, b: Path) -> None:
    """Weights, optimizer state, metrics and symmetry records bitwise equal (wall-clock fields aside)."""
    saved_a, saved_b = checkpoint(a), checkpoint(b)
    differ = [name for name, value in saved_a["model"].items() if not torch.equal(value, saved_b["model"][name])]
    assert not differ, f"weights or buffers differ: {differ}"
    momenta_a = [s["momentum_buffer"] for s in saved_a["optimizer"]["state"].values()]
    momenta_b = [s["momentum_buffer"] for s in saved_b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momenta_a, momenta_b, strict=True)), "momentum buffers differ"
    for name in ("metrics.jsonl", "symmetry.jsonl"):
        assert without_times(jsonl(a / name)) == without_times(jsonl(b / name)), f"{name} differs"


@pytest.mark.slow
def test_two_ranks_resume_and_match_two_micro_batches(tmp_path):
    """splitk kernels and splitk all-reduce: 2 ranks equal 2 micro-batches, both stopped and resumed."""
    noisy = ["--reduction", "splitk", "--allreduce", "splitk", "--noise-seed", "7", "--init", "he"]
    ranks, micro = tmp_path / "ranks", tmp_path / "micro"
    launch([*noisy, "--steps", "3", "--out", str(ranks)], ranks=2)
    launch(["--resume", "--steps", "6", "--out", str(ranks)], ranks=2)
    launch([*noisy, "--micro-batches", "2", "--steps", "3", "--out", str(micro)])
    launch(["--resume", "--steps", "6", "--out", str(micro)])
    assert_same_run(ranks, micro)
    config, env = (json.loads((ranks / name).read_text()) for name in ("config.json", "env.json"))
    assert config["derived"]["world_size"] == 2 and config["options"]["allreduce"] == "splitk"
    assert [rank["rank"] for rank in env["ranks"]] == [0, 1]
    assert all(rank["device_record"]["host"]["cpu_count"] for rank in env["ranks"])
    assert sorted(p.name for p in ranks.iterdir()) == ["checkpoint.pt", "config.json", "env.json", "metrics.jsonl",
                                                      "plots", "summary.json", "symmetry.jsonl"]
    refused = invoke(["--resume", "--out", str(ranks)])
    assert refused.exit_code == 1
    assert "was trained on 2 rank(s) and this launch has 1; resume it with torchrun --nproc_per_node=2" \
        in refused.output


@pytest.mark.slow
def test_four_ranks_match_four_micro_batches(tmp_path):
    ranks, micro = tmp_path / "ranks", tmp_path / "micro"
    launch([*FIXED, "--init", "he", "--steps", "2", "--out", str(ranks)], ranks=4)
    launch([*FIXED, "--init", "he", "--micro-batches", "4", "--steps", "2", "--out", str(micro)])
    assert_same_run(ranks, micro)


@pytest.mark.parametrize("args, message", [
    (["--micro-batches", "2"], "--micro-batches needs --allreduce fixed or splitk"),
    ([*FIXED, "--micro-batches", "3"], "--batch-size=256 does not split into 3 equal shards"),
    ([*FIXED, "--micro-batches", "2", "--sync-bn"], "--sync-bn needs CUDA ranks under torchrun"),
    (["--allreduce", "ring"], "'ring' is not one of 'native', 'fixed', 'splitk'"),
    (["--micro-batches", "0"], "--micro-batches=0 is not allowed; it must be >= 1"),
])
def test_data_parallel_options_are_checked_before_training(tmp_path, args, message):
    result = invoke([*TINY_ARGS, "--steps", "1", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ranks_started_differently_are_refused(tmp_path):
    """Two ranks started by hand with different --lr: both refuse before training."""
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, str(RUN_SCRIPT), *TINY_ARGS, "--steps", "1", "--lr", lr,
                               "--out", str(tmp_path / "run")], env={**ENV, **common, "RANK": rank, "LOCAL_RANK": rank},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank, lr in (("0", "0.05"), ("1", "0.1"))]
    outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    for rank, output in zip(ranks, outputs):
        assert rank.returncode == 1, output
        assert "every rank must run the same command" in output, output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_dying_rank_takes_the_run_down_and_leaves_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(RUN_SCRIPT),
               *TINY_ARGS, *FIXED, "--steps", "500", "--out", str(out)]
    launch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    while not (out / "checkpoint.pt").exists():
        assert launch.poll() is None, launch.communicate()[0][-3000:]
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-P", str(launch.pid)], capture_output=True, text=True).stdout.split()
    rank_one = [pid for pid in workers if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")]
    os.kill(int(rank_one[0]), signal.SIGKILL)
    output = launch.communicate(timeout=300)[0]
    assert launch.returncode != 0
    # rank 0 says why it stopped, unless torchrun's SIGTERM reaches it first; torchrun names the killed rank
    assert "the run stopped" in output or "Signal 9 (SIGKILL)" in output, output
    saved = checkpoint(out)
    assert saved["state"]["step"] % 5 == 0 and saved["state"]["step"] > 0, "the checkpoint is an epoch end's"


TWO_RANK_EPOCH = 5  # steps: 1437 images in batches of 256, the last (157) does not split in 2 and is dropped
POISON_SCRIPT = """
import math
import sys
import time
sys.path[0] = {root!r}
import torch
from nets.training.loop import Training
from tools.run import main

step = Training._train_step


def poisoned(self, images, labels, lr):
    if self.world.rank == 1 and self.state.step == {poisoned_step}:
        with torch.no_grad():
            next(self.model.parameters()).fill_(math.nan)
    return step(self, images, labels, lr)


def slow_finish(self, finish=Training._finish):  # rank 0 takes its time, as on a busy machine
    if self.world.rank == 0:
        time.sleep(3)
    return finish(self)


Training._train_step, Training._finish = poisoned, slow_finish
main()
"""


@pytest.mark.slow
def test_a_loss_non_finite_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Rank 1 alone trains on NaN weights after the epoch-end checkpoint: both ranks stop at that step
    with the same line and exit 1; rank 0's summary.json says so (written although rank 1 was done
    long before) and its checkpoint is the epoch end's."""
    script, out, epoch = tmp_path / "poisoned.py", tmp_path / "run", TWO_RANK_EPOCH
    script.write_text(POISON_SCRIPT.format(root=str(RUN_SCRIPT.parents[1]), poisoned_step=epoch + 1))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               *TINY_ARGS, *FIXED, "--steps", str(2 * epoch), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    stop = (f"the loss became non-finite (nan) at step {epoch + 2}, so training stopped there; "
            f"{out / 'checkpoint.pt'} keeps step {epoch} (summary.json records the stop)")
    lines = sorted(line for line in output.splitlines() if line.startswith("Error: rank"))
    assert lines == [f"Error: rank {rank}: {stop}" for rank in (0, 1)], output[-3000:]
    assert "interrupt:" not in output, "torchrun's SIGTERM reached rank 0 before it had finished"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == stop and summary["checkpoint_step"] == epoch and summary["steps"] == epoch + 1
    assert checkpoint(out)["state"]["step"] == epoch
