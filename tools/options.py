"""Click pieces the command lines share: list options, --json and --device, error reporting, and
ending a program's process.

Output paths are checked while the options are parsed, so a command that cannot write its result
says so before it runs (not after an hour of benchmarks); --device is checked the same way.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from nets.checks import out_of_memory
from nets.files import unwritable_reason, write_json
from nets.training.numerics import resolve_device


class CommaList(click.ParamType):
    """A comma-separated list of choices, e.g. "fixed,splitk"."""

    name = "list"

    def __init__(self, allowed):
        self.allowed = tuple(allowed)

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        items = tuple(item.strip() for item in str(value).split(",") if item.strip())
        bad = [item for item in items if item not in self.allowed]
        if bad or not items:
            self.fail(f"{value!r}: choose a comma-separated list from {', '.join(self.allowed)}", param, ctx)
        return items


class OutputPath(click.Path):
    """A file (or, with dir_okay, a directory) the command will write: checked before any work."""

    def __init__(self, dir_okay: bool = False):
        super().__init__(dir_okay=dir_okay, file_okay=not dir_okay)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        reason = unwritable_reason(Path(path), directory=self.dir_okay)
        if reason:
            self.fail(f"cannot write {path}: {reason}", param, ctx)
        return path


class Device(click.ParamType):
    """cpu, cuda or cuda:N, refused when this machine has no such device."""

    name = "device"

    def convert(self, value, param, ctx):
        try:
            return str(resolve_device(str(value)))
        except ValueError as error:
            self.fail(str(error), param, ctx)


class Seconds(click.ParamType):
    """A finite number of seconds > 0."""

    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 < seconds < math.inf:
            self.fail(f"{value!r} is not allowed; give a finite number of seconds > 0", param, ctx)
        return seconds


class IntList(click.ParamType):
    """Comma-separated integers in [minimum, limit), e.g. "0,1,5" (call numbers, seeds)."""

    name = "list"

    def __init__(self, minimum: int = 0, limit: int | None = None):
        self.minimum, self.limit = minimum, limit

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(int(part) for part in str(value).split(",") if part.strip())
        except ValueError:
            items = ()
        if not items or min(items) < self.minimum or (self.limit is not None and max(items) >= self.limit):
            allowed = f">= {self.minimum}" if self.limit is None else f"in [{self.minimum}, {self.limit})"
            self.fail(f"{value!r} is not a comma-separated list of integers {allowed}, e.g. 0,1,2", param, ctx)
        return items


def json_option(fn):
    return click.option("--json", "json_path", type=OutputPath(), default=None,
                        help="Also write the result to this JSON file.")(fn)


def device_option(fn):
    return click.option("--device", type=Device(), default=None,
                        help="cpu, cuda or cuda:N [default: cuda when available].")(fn)


def emit(result, text: str, json_path: str | None) -> None:
    """Print the table; write the result as JSON too when asked."""
    click.echo(text)
    if json_path:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")


class _OneLineErrors:
    """Reports what the library refuses (ValueError, TypeError), cannot read or write (OSError) or
    cannot fit in memory as one line, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, TypeError, OSError) as error:
            raise click.ClickException(str(error)) from error
        except (MemoryError, RuntimeError) as error:
            if not out_of_memory(error):
                raise
            raise click.ClickException(f"not enough memory: {' '.join(str(error).split())[:300]}") from error


class ToolGroup(_OneLineErrors, click.Group):
    """A command group whose subcommands report errors in one line."""


class ToolCommand(_OneLineErrors, click.Command):
    """A command that reports errors in one line."""


def run_as_program(command: click.Command) -> None:
    """Run `command` as this process's program, then end the process at once with its exit status.

    Python's teardown of the modules a run loads (torch, numba, matplotlib) took 0.8 s after
    the quick run had finished. Every file the command writes is closed when it returns, its
    process group left and its worker threads idle; the standard streams are flushed here.
    An uncaught exception still ends the process as usual, with its traceback.
    """
    status = 0
    try:
        command()
    except SystemExit as stop:
        status = stop.code
    if status is not None and not isinstance(status, int):  # sys.exit("message"): printed, status 1
        print(status, file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)
