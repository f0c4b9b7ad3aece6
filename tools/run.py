"""Command line for training runs with dialled reduction noise: `python tools/run.py --help`."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

try:
    import nets.training  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nets.training.config import (ACCUMULATES, DATASETS, DTYPES, GRANULARITIES, NETS, PRESETS,  # noqa: E402
                                  REDUCTIONS, ROLE_MODES, RunConfig, build_config, resumed_config)
from nets.training.loop import SetupError, Training  # noqa: E402
from nets.training.rundir import CONFIG, RunDirError, default_run_dir, prepare_run_dir  # noqa: E402

RUN_CONTROL = ("preset", "out", "resume", "overwrite")
INTERRUPTED_EXIT = 130


def choice(values) -> click.Choice:
    return click.Choice(list(values), case_sensitive=False)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--preset", type=choice(PRESETS), default="quick", show_default=True,
              help="quick: small zero-init ConstNet on digits (CPU, < 2 min); paper: WRN-16-10 ConstNet, CIFAR-10.")
@click.option("--net", type=choice(NETS), help="Network family.")
@click.option("--init", help="constnet: zero|he; leakynet: letters such as 1_ii_ii_ii; wrn: he; "
                             "mlp: replicas=R[,noise=EPS].")
@click.option("--widen", type=int, help="Width multiplier k (mlp: hidden units).")
@click.option("--depth", type=int, help="WRN depth (constnet/leakynet 3n+4, wrn 6n+4; mlp 2).")
@click.option("--dropout", type=float, help="Dropout after every block conv.")
@click.option("--stem-dropout", type=float, help="Dropout after the stem (constnet, leakynet).")
@click.option("--reduction", type=choice(REDUCTIONS),
              help="Reduction order of every conv/linear: fixed, splitk (seeded noise), atomic, native (torch).")
@click.option("--splits", type=int, help="K chunks per reduction (default 1 for fixed, 8 otherwise).")
@click.option("--granularity", type=choice(GRANULARITIES), help="How finely the splitk order varies.")
@click.option("--noise-seed", type=int, help="Seed of the splitk orders.")
@click.option("--forward", type=choice(ROLE_MODES), help="Override the forward reduction's mode.")
@click.option("--input-grad", type=choice(ROLE_MODES), help="Override the input-gradient reduction's mode.")
@click.option("--weight-grad", type=choice(ROLE_MODES), help="Override the weight-gradient reduction's mode.")
@click.option("--dtype", type=choice(DTYPES), help="Operand precision of the multiplies (native: autocast/TF32).")
@click.option("--accumulate", type=choice(ACCUMULATES), help="Format of the partial sums.")
@click.option("--native-deterministic", is_flag=True,
              help="With --reduction native: torch deterministic algorithms and deterministic cuDNN.")
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
    """
    explicit = {
        name: value
        for name, value in options.items()
        if name not in RUN_CONTROL and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    }
    try:
        if options["resume"]:
            if options["out"] is None:
                raise click.UsageError("--resume needs --out naming the run directory to continue")
            run_dir = prepare_run_dir(options["out"], resume=True, overwrite=options["overwrite"])
            saved = RunConfig.from_dict(run_dir.read_json(CONFIG)["options"])
            training = Training(resumed_config(saved, explicit), echo=click.echo)
        else:
            config = build_config(options["preset"], explicit)
            training = Training(config, echo=click.echo)
            out = options["out"] or default_run_dir(config.net, config.reduction, config.dtype)
            run_dir = prepare_run_dir(out, resume=False, overwrite=options["overwrite"])
    except (SetupError, RunDirError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"run directory: {run_dir.path}")
    invocation = {"argv": sys.argv[1:], "out": str(run_dir.path), "overwrite": options["overwrite"]}
    try:
        outcome = training.run(run_dir, resume=options["resume"], invocation=invocation)
    except SetupError as error:
        raise click.ClickException(str(error)) from None
    if outcome.interrupted:
        ctx.exit(INTERRUPTED_EXIT)


if __name__ == "__main__":
    main()
