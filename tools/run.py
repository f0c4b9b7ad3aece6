"""Command line for training runs with dialled reduction noise: `python tools/run.py --help`."""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tools/NAME.py`: import from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import click
from click.core import ParameterSource

from kernels import GRANULARITIES, KERNEL_ACCUMULATES, KERNEL_PRECISIONS, MODES
from kernels.allreduce import ALLREDUCE_MODES
from nets.training.config import (DATASETS, INTERCEPTS, NETS, PRESETS, REDUCTIONS, build_config, resumed_config,
                                  saved_config)
from nets.training.distributed import (check_resume_world, check_same_run, join, launched_world, leave,
                                      shared_run_dir)
from nets.training.loop import SetupError, Training
from nets.training.rundir import CONFIG, RunDirError, default_run_dir, prepare_run_dir
from tools.options import run_as_program

RUN_CONTROL = ("preset", "out", "resume", "overwrite")
INTERRUPTED_EXIT = 130


def choice(values) -> click.Choice:
    return click.Choice(list(values), case_sensitive=False)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--preset", type=choice(PRESETS), default="quick", show_default=True,
              help="quick: small zero-init ConstNet on digits (CPU, < 2 min); paper: WRN-16-10 ConstNet, CIFAR-10.")
@click.option("--net", type=choice(NETS), help="Network family.")
@click.option("--init", help="constnet: zero|he; leakynet: letters such as 1_ii_ii_ii; wrn: he; "
                             "mlp: replicas=R[,noise=EPS]; transformer: torch.")
@click.option("--widen", type=int, help="Width multiplier k (mlp: hidden units; transformer: features).")
@click.option("--depth", type=int, help="WRN depth (constnet/leakynet 3n+4, wrn 6n+4; mlp 2; transformer: layers).")
@click.option("--dropout", type=float, help="Dropout after every block conv.")
@click.option("--stem-dropout", type=float, help="Dropout after the stem (constnet, leakynet).")
@click.option("--reduction", type=choice(REDUCTIONS),
              help="Reduction order of every conv/linear: fixed, splitk (seeded noise), atomic, native (torch).")
@click.option("--splits", type=int, help="K chunks per reduction (default 1 for fixed, 8 otherwise).")
@click.option("--granularity", type=choice(GRANULARITIES), help="How finely the splitk order varies.")
@click.option("--noise-seed", type=int, help="Seed of the splitk orders.")
@click.option("--forward", type=choice(MODES), help="Override the forward reduction's mode.")
@click.option("--input-grad", type=choice(MODES), help="Override the input-gradient reduction's mode.")
@click.option("--weight-grad", type=choice(MODES), help="Override the weight-gradient reduction's mode.")
@click.option("--dtype", type=choice(KERNEL_PRECISIONS),
              help="Operand precision of the multiplies (native: autocast/TF32).")
@click.option("--accumulate", type=choice(KERNEL_ACCUMULATES), help="Format of the partial sums.")
@click.option("--native-deterministic", is_flag=True,
              help="With --reduction native: torch deterministic algorithms and deterministic cuDNN.")
@click.option("--intercept", type=choice(INTERCEPTS),
              help="How the policy reaches the net: patch (its Conv2d/Linear layers), dispatch "
                   "(kernels.policy_mode: every matmul and convolution, attention included) or function "
                   "(kernels.function_policy_mode: F.conv2d, F.linear and the matmul family, at less cost).")
@click.option("--allreduce", type=choice(ALLREDUCE_MODES),
              help="Gradient all-reduce under torchrun: native (the backend's), fixed (rank order), "
                   "splitk (seeded order; --noise-seed, --granularity).")
@click.option("--sync-bn", is_flag=True, help="Under torchrun on GPUs: BatchNorm statistics over all ranks.")
@click.option("--micro-batches", type=int,
              help="One process replaying R ranks: R micro-batches, gradients averaged as --allreduce does.")
@click.option("--dataset", type=choice(DATASETS), help="digits (bundled), synthetic, mnist or cifar10.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Directory holding mnist/cifar10 files.")
@click.option("--batch-size", type=int, help="Training batch size.")
@click.option("--lr", type=float, help="SGD learning rate.")
@click.option("--momentum", type=float, help="SGD momentum (no Nesterov).")
@click.option("--weight-decay", type=float, help="Weight decay on all parameters.")
@click.option("--epochs", type=int, help="Training length in epochs.")
@click.option("--steps", type=int, help="Training length in steps (instead of --epochs).")
@click.option("--lr-milestones", help="Epochs where lr is multiplied by 0.2, e.g. 100,150 or E-140,E-80,E-40.")
@click.option("--seed", type=int, help="Seed of init, data order, augmentation and dropout.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory [runs/<time>-<net>-<reduction>-<dtype>].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Train a network with every conv/linear layer under a chosen reduction policy.

    Options left out take the preset's value; options given always win. The run directory
    receives config.json, env.json, metrics.jsonl, symmetry.jsonl, summary.json,
    checkpoint.pt and plots/. Ctrl-C saves a checkpoint; --resume continues from it.

    \b
    Examples:
      python tools/run.py                          # quick: zero-init ConstNet, digits, splitk noise
      python tools/run.py --reduction=fixed        # deterministic: the symmetry never breaks
      python tools/run.py --reduction=atomic --dtype=fp16
      python tools/run.py --preset paper --data-dir ~/data
      python tools/run.py --resume --out runs/NAME
      torchrun --nproc_per_node=2 tools/run.py --reduction=fixed --allreduce=fixed --out runs/ddp
      python tools/run.py --reduction=fixed --allreduce=fixed --micro-batches=2   # the same, in one process
    """
    explicit = {
        name: value
        for name, value in options.items()
        if name not in RUN_CONTROL and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    }
    failure, together, interrupted = None, True, False
    try:
        interrupted = train(launched_world(), options, explicit)
    except click.ClickException as error:
        error.show()
        failure, together = error.exit_code, isinstance(error, StoppedOnEveryRank)
    leave(wait=together)  # after the except block: nothing of the run is referenced any more
    if failure is not None:
        ctx.exit(failure)
    if interrupted:
        ctx.exit(INTERRUPTED_EXIT)


class StoppedOnEveryRank(click.ClickException):
    """A run that stopped at the same step on every rank (a non-finite loss): the ranks leave
    the process group together, so that none is terminated while rank 0 still writes."""


def train(world, options: dict, explicit: dict) -> bool:
    """Build and train the run on this rank; True when Ctrl-C stopped it.

    Nothing of the run outlives this call, so the process group can then end cleanly.
    """
    prefix = f"rank {world.rank}: " if world.size > 1 else ""
    echo = click.echo if world.main else (lambda line: None)
    try:
        join(world)
        if options["resume"]:
            if options["out"] is None:
                raise click.UsageError("--resume needs --out naming the run directory to continue")
            run_dir = shared_run_dir(world, lambda: prepare_run_dir(options["out"], resume=True,
                                                                    overwrite=options["overwrite"]))
            saved = run_dir.read_json(CONFIG)
            config = resumed_config(saved_config(saved, run_dir.file(CONFIG)), explicit)
            check_resume_world(saved["derived"], world, run_dir.path)
        else:
            config = build_config(options["preset"], explicit)
        check_same_run(world, sys.argv[1:], config.to_dict())
        training = Training(config, echo=echo)
        if not options["resume"]:
            out = options["out"] or default_run_dir(config.net, config.reduction, config.dtype)
            run_dir = shared_run_dir(world, lambda: prepare_run_dir(out, resume=False, overwrite=options["overwrite"]))
    except (SetupError, RunDirError, ValueError) as error:
        raise click.ClickException(prefix + str(error)) from None
    echo(f"run directory: {run_dir.path}")
    invocation = {"argv": sys.argv[1:], "out": str(run_dir.path), "overwrite": options["overwrite"],
                  "world_size": world.size}
    try:
        outcome = training.run(run_dir, resume=options["resume"], invocation=invocation)
    except (SetupError, RunDirError) as error:
        raise click.ClickException(prefix + str(error)) from None
    except RuntimeError as error:
        if world.size == 1:
            raise
        raise click.ClickException(
            f"{prefix}the run stopped ({type(error).__name__}: {error}); the checkpoint in {run_dir.path} is "
            f"intact: continue with torchrun --nproc_per_node={world.size} tools/run.py --resume --out {run_dir.path}"
        ) from None
    if outcome.stopped:
        raise StoppedOnEveryRank(prefix + outcome.stopped)
    return outcome.interrupted


if __name__ == "__main__":
    run_as_program(main)
