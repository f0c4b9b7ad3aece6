"""The training loop behind tools/run.py: one network, one reduction policy, one run directory.

`Training(config)` builds everything a run needs (device, numerics, data, model, optimizer),
raising SetupError for anything the user has to fix; `Training.run(run_dir)` trains, writing
metrics.jsonl, symmetry.jsonl, a checkpoint at every epoch end and on Ctrl-C, and at the end
summary.json, the plots and the closing device record.

Reproducibility: the seed fixes model init (torch's generator), data order and augmentation
(nets.data.BatchLoader, a pure function of (seed, epoch, step)) and dropout (torch's generator,
saved in checkpoints); --noise-seed fixes the splitk orders, whose call numbers come from a
CallCounter private to the run and saved in checkpoints. Evaluation draws from a fresh counter
of its own, so an evaluation never shifts the training's sequence of orders: a run stopped and
resumed at any step sees the same orders, batches and dropout masks as an uninterrupted one.

With --dtype fp16 the loss is scaled (torch.amp.GradScaler, dynamic scale, saved in checkpoints),
so that small gradients survive the rounding of GEMM operands to fp16.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from kernels import CallCounter, counting, function_policy_mode, patch, policy_mode
from nets.checks import out_of_memory
from nets.data import BatchLoader, load_dataset

from . import symmetry
from .checkpoint import load_checkpoint, save_checkpoint
from .config import LRSchedule, RunConfig, lr_milestone_epochs
from .interrupt import deferred_interrupt
from .models import build_model
from .numerics import autocast, numerics_from_config, prepare_cuda_environment, resolve_device, torch_switches
from .plots import write_plots
from .records import device_record, env_record
from .report import final_table, progress_line, test_line
from .outcome import RunOutcome, non_finite_loss, run_summary, write_failure
from .rundir import CHECKPOINT, CONFIG, ENV, METRICS, SUMMARY, SYMMETRY, RunDir, RunDirWriteError
from .state import Interval, RunState
from .distributed import batch_plan, current_world, make_steps, ranks_record, shards_of, stop_together
from .step import make_optimizer

# The train/test split of the embedded datasets is fixed, so runs that differ in --seed
# differ in init, order and noise, not in which images they are tested on.
DATA_SPLIT_SEED = 0
PROGRESS_SECONDS = 5.0


class SetupError(ValueError):
    """A run cannot start as configured (bad option combination, missing data, ...)."""


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


class Training:
    """Everything one run trains with, built from its config."""

    def __init__(self, config: RunConfig, echo: Callable[[str], None] = print):
        self.config, self.echo = config, echo
        try:
            self._setup()
        except (ValueError, TypeError, FileNotFoundError) as error:
            raise SetupError(str(error)) from None
        except (MemoryError, RuntimeError) as error:
            if not out_of_memory(error):
                raise
            raise SetupError("not enough memory for this network and data: choose a smaller --widen, --depth or "
                             "--batch-size") from None

    def _setup(self) -> None:
        config = self.config
        self.device = resolve_device(config.device)
        self.numerics = numerics_from_config(config, self.device)
        prepare_cuda_environment(self.numerics, self.device)
        seed_everything(config.seed)
        data = load_dataset(config.dataset, data_dir=config.data_dir, seed=DATA_SPLIT_SEED)
        self.data_info = data.info
        self.world = current_world()
        shards = shards_of(config, self.world, self.device)
        drop_last, smallest_shard = batch_plan(len(data.train), config.batch_size, shards)
        self.model = build_model(config, data.info.in_channels, data.info.image_size, data.info.num_classes)
        self.patched_layers = 0
        self.capped_splits = {}
        # --intercept dispatch or function: training steps and evaluation run under the mode, the model unpatched
        self.mode = None
        if self.numerics.policy is not None and config.intercept != "patch":
            mode = policy_mode if config.intercept == "dispatch" else function_policy_mode
            self.mode = mode(self.numerics.policy, backend=self.numerics.backend)
        elif self.numerics.policy is not None:
            # the splits are capped over the smallest batch a rank trains (its weight gradients are the shortest)
            example = torch.zeros(smallest_shard, data.info.in_channels, *data.info.image_size)
            report = patch(self.model, self.numerics.policy, backend=self.numerics.backend, example_input=example)
            self.patched_layers, self.capped_splits = report.count, report.caps
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, config.lr, config.momentum, config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.dtype == "fp16")
        self.train_loader = BatchLoader(data.train.to(self.device), config.batch_size, seed=config.seed,
                                        augment=data.augment, drop_last=drop_last)
        self.test_loader = BatchLoader(data.test.to(self.device), config.eval_batch_size, shuffle=False)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = config.steps if config.steps is not None else config.epochs * self.steps_per_epoch
        total_epochs = self.total_steps / self.steps_per_epoch
        self.schedule = LRSchedule(config.lr, config.lr_gamma, [
            round(epoch * self.steps_per_epoch) for epoch in lr_milestone_epochs(config.lr_milestones, total_epochs)
        ])
        self.counter = CallCounter()
        self.steps = make_steps(self, self.world)

    # -- records ---------------------------------------------------------------------------
    def derived(self) -> dict:
        """What the options resolved to on this machine (config.json's "derived" section)."""
        return {
            "device": str(self.device),
            "numerics": self.numerics.to_dict(),
            "numerics_description": self.numerics.describe(),
            "patched_layers": self.patched_layers,
            "capped_splits": self.capped_splits,
            "model": type(self.model).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dataset": self.data_info.to_dict(),
            "data_split_seed": DATA_SPLIT_SEED,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "world_size": self.world.size,
            "drop_last_batch": self.train_loader.drop_last,
            "lr_schedule": self.schedule.to_dict(),
            "symmetry_broken_below": symmetry.BROKEN_BELOW,
            "symmetry_layers": [name for name, _ in symmetry.summarised_layers(self.model)],
        }

    def _epoch(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 4)

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.session_start

    # -- the run ---------------------------------------------------------------------------
    def run(self, run_dir: RunDir, *, resume: bool = False, invocation: dict | None = None) -> RunOutcome:
        """Train to the configured length (continuing the run in `run_dir` when `resume`). A non-finite
        loss (RunOutcome.stopped) or a failed write (RunDirWriteError) stops it, keeping its last checkpoint."""
        self.checkpoint_step, self.stopped = None, None
        try:
            return self._run(run_dir, resume, invocation)
        except RunDirWriteError as error:
            raise RunDirWriteError(write_failure(error, run_dir, self.checkpoint_step)) from None

    def _run(self, run_dir: RunDir, resume: bool, invocation: dict | None) -> RunOutcome:
        self.run_dir = run_dir
        self.session_start = time.perf_counter()
        self._last_echo = -math.inf
        invocation = {**(invocation or {}), "resume": resume, "time": datetime.now(timezone.utc).isoformat()}
        with torch_switches(self.numerics, self.device), counting(self.counter), \
                deferred_interrupt(self.echo) as interrupt:
            restart = resume and not run_dir.file(CHECKPOINT).is_file()
            self.state = self._resume(invocation) if resume and not restart else self._start(invocation, restart)
            self.elapsed_before = self.state.elapsed_seconds
            if self.numerics.atomic_emulated:
                self.echo("note: atomic mode on CPU is emulated: chunk partial sums are added in an order drawn "
                          "from OS randomness on every call (not reproducible, like GPU atomics)")
            self.echo(f"training {self.derived()['model']} ({self.patched_layers} layers patched) on "
                      f"{self.data_info.name}, {self.device}: {self.numerics.describe()}")
            if self._train(interrupt):
                self._save_checkpoint()
                if self.world.main:
                    write_plots(self.state.metrics, self.state.symmetry, run_dir.plots)
                self.echo(f"interrupted at step {self.state.step}; checkpoint saved. Resume with: "
                          f"python tools/run.py --resume --out {run_dir.path}")
                return RunOutcome(None, True)
            summary = self._finish()
            if self.stopped:
                stop_together(self.world)
        self.echo(final_table(summary, self.state.symmetry[-1] if self.state.symmetry else None))
        return RunOutcome(summary, False, self.stopped)

    def _start(self, invocation: dict, restart: bool = False) -> RunState:
        """A new run; `restart`: a resumed one that never reached a checkpoint starts over, keeping its record."""
        run_dir = self.run_dir
        earlier = run_dir.read_json(CONFIG).get("invocations", []) if restart else []
        if restart:
            self.echo(f"{run_dir.path} has no {CHECKPOINT} yet: starting over from step 0 with its saved options")
        run_dir.write_json(CONFIG, {"options": self.config.to_dict(), "derived": self.derived(),
                                    "invocations": [*earlier, invocation]})
        run_dir.write_json(ENV, {**env_record(), **ranks_record(self.world, self.device)})
        run_dir.write_jsonl(METRICS, [])
        run_dir.write_jsonl(SYMMETRY, [])
        state = RunState()
        self.state = state
        self._track_symmetry()
        return state

    def _resume(self, invocation: dict) -> RunState:
        run_dir = self.run_dir
        state = load_checkpoint(run_dir, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                                counter=self.counter, device=self.device)
        if state.step > self.total_steps:
            raise SetupError(f"{run_dir.path} has already trained {state.step} steps; "
                             f"a resumed run can only grow (this length is {self.total_steps} steps)")
        saved, env = run_dir.read_json(CONFIG), run_dir.read_json(ENV)  # both checked before anything is written
        self.checkpoint_step = state.step
        run_dir.write_json(CONFIG, {"options": self.config.to_dict(), "derived": self.derived(),
                                    "invocations": [*saved.get("invocations", []), invocation]})
        env.setdefault("resumes", []).append({**env_record(), **ranks_record(self.world, self.device)})
        run_dir.write_json(ENV, env)
        run_dir.write_jsonl(METRICS, state.metrics)
        run_dir.write_jsonl(SYMMETRY, state.symmetry)
        self.echo(f"resuming {run_dir.path} at step {state.step} of {self.total_steps}")
        return state

    def _train(self, interrupt) -> bool:
        """Train until the last step; True when stopped early by Ctrl-C."""
        state, order, order_epoch = self.state, None, None
        while state.step < self.total_steps:
            if interrupt.requested:
                return True
            epoch, index = divmod(state.step, self.steps_per_epoch)
            if order_epoch != epoch:
                order, order_epoch = self.train_loader.order(epoch), epoch
            batch = self.train_loader.batch(epoch, index, order)
            lr = self.schedule.at(state.step)
            started = time.perf_counter()
            loss, correct = self._train_step(batch.images, batch.labels, lr)
            if not math.isfinite(loss):
                self.stopped = non_finite_loss(loss, state.step + 1, self.run_dir, self.checkpoint_step)
                return False
            seconds = time.perf_counter() - started
            count = batch.labels.shape[0]
            state.step += 1
            state.images += count
            state.train_seconds += seconds
            state.interval.add(loss, correct, count, seconds)
            self._after_step(lr)
        return False

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[float, int]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.mode or nullcontext():
            return self.steps.step(images, labels, self.state.step)

    def _after_step(self, lr: float) -> None:
        step = self.state.step
        self._track_symmetry()
        last = step == self.total_steps
        if step % self.config.log_every == 0 or last:
            self._log_train(lr)
        epoch_end = step % self.steps_per_epoch == 0
        if epoch_end or last:
            record = self._evaluate()
            self.echo(test_line(record))
        if epoch_end and not last:
            self._save_checkpoint()

    def _track_symmetry(self) -> None:
        """Record symmetry when due; until it has broken, check every layer after every step."""
        state = self.state
        if symmetry.record_due(state.step, self.steps_per_epoch, self.total_steps):
            record = symmetry.symmetry_record(self.model, state.step, self._epoch(state.step))
            state.symmetry.append(record)
            self.run_dir.append_jsonl(SYMMETRY, record)
            forward = symmetry.summarised_forward(record)
        elif state.symmetry_broke_step is None:
            forward = symmetry.forward_correlations(self.model)
        else:
            return
        state.max_forward = symmetry.max_correlation(forward.values())
        for name, correlation in forward.items():
            if correlation < symmetry.BROKEN_BELOW:
                state.layer_broke_steps.setdefault(name, state.step)
        if state.symmetry_broke_step is None and state.max_forward < symmetry.BROKEN_BELOW:
            state.symmetry_broke_step = state.step

    def _log_train(self, lr: float) -> None:
        state, interval = self.state, self.state.interval
        record = {
            "kind": "train",
            "step": state.step,
            "epoch": self._epoch(state.step),
            "loss": interval.loss_sum / interval.count,
            "acc": interval.correct / interval.count,
            "lr": lr,
            "steps": interval.steps,
            "time": self._elapsed(),
            "images_per_s": interval.count / interval.seconds if interval.seconds > 0 else 0.0,
        }
        state.interval = Interval()
        state.metrics.append(record)
        self.run_dir.append_jsonl(METRICS, record)
        now = time.perf_counter()
        if now - self._last_echo >= PROGRESS_SECONDS or state.step == self.total_steps:
            self._last_echo = now
            self.echo(progress_line(record, self.total_steps, state.max_forward))

    @torch.no_grad()
    def _evaluate(self) -> dict:
        """Test loss and accuracy; the record is appended to the history and metrics.jsonl."""
        self.model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        with counting(CallCounter()), self.mode or nullcontext(), autocast(self.numerics, self.device):
            for batch in self.test_loader.epoch(0):
                logits = self.model(batch.images).float()
                loss_sum += F.cross_entropy(logits, batch.labels, reduction="sum").item()
                correct += int((logits.argmax(dim=1) == batch.labels).sum())
                count += batch.labels.shape[0]
        self.model.train()
        state = self.state
        record = {"kind": "test", "step": state.step, "epoch": self._epoch(state.step), "loss": loss_sum / count,
                  "acc": correct / count, "time": self._elapsed()}
        if state.best_test_acc is None or record["acc"] > state.best_test_acc:
            state.best_test_acc, state.best_test_step = record["acc"], state.step
        state.metrics.append(record)
        self.run_dir.append_jsonl(METRICS, record)
        return record

    def _save_checkpoint(self) -> None:
        self.state.elapsed_seconds = self._elapsed()
        save_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                        counter=self.counter, schedule=self.schedule.to_dict(), state=self.state, device=self.device)
        self.checkpoint_step = self.state.step

    def _finish(self) -> dict:
        """Final checkpoint (none after a non-finite loss), summary.json, plots and the closing device record."""
        if self.stopped is None:
            self._save_checkpoint()
        state = self.state
        summary = run_summary(state, run_dir=self.run_dir, numerics=self.numerics.describe(),
                              steps_per_epoch=self.steps_per_epoch,
                              layers=[name for name, _ in symmetry.summarised_layers(self.model)],
                              stopped=self.stopped, checkpoint_step=self.checkpoint_step)
        if self.mode is not None:
            summary[self.config.intercept] = self.mode.report.to_dict()
            self.echo(self.mode.report.table())
        self.run_dir.write_json(SUMMARY, summary)
        if self.world.main:
            write_plots(state.metrics, state.symmetry, self.run_dir.plots)
        env = self.run_dir.read_json(ENV)
        env["device_end"] = device_record()
        self.run_dir.write_json(ENV, env)
        return summary
