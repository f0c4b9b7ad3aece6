"""Click pieces the command lines share: list options, --json and --device, and error reporting."""
from __future__ import annotations

import click

from nets.files import write_json


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


def json_option(fn):
    return click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                        help="Also write the result to this JSON file.")(fn)


def device_option(fn):
    return click.option("--device", default=None, help="cpu or cuda [default: cuda when available].")(fn)


def emit(result, text: str, json_path: str | None) -> None:
    """Print the table; write the result as JSON too when asked."""
    click.echo(text)
    if json_path:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")


class ToolGroup(click.Group):
    """Reports invalid arguments found by the library (ValueError / TypeError) as one-line errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, TypeError) as error:
            raise click.ClickException(str(error)) from error
