"""The command lines as one installed program (`symbreak`) and as scripts run from any directory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tools.cli import main

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("run", "probe", "bench", "experiment", "report")


def test_symbreak_holds_every_command_line():
    assert set(main.commands) == set(TOOLS)
    result = CliRunner().invoke(main, ["probe", "device"])
    assert result.exit_code == 0 and "host.hostname" in result.output, result.output
    result = CliRunner().invoke(main, ["run", "--reduction", "sorted"])
    assert result.exit_code == 2 and "fixed" in result.output, result.output


@pytest.mark.parametrize("tool", TOOLS)
def test_every_command_documents_itself(tool):
    result = CliRunner().invoke(main, [tool, "--help"], prog_name="symbreak")
    assert result.exit_code == 0 and "Usage: symbreak " + tool in result.output, result.output


def test_a_tool_runs_as_a_script_from_another_directory(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "report.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Usage: report.py" in done.stdout, done.stderr


PROGRAM = """
import sys
import click
from tools.options import run_as_program

@click.command()
@click.argument("how")
def command(how):
    print("written before the end")  # held in the pipe's buffer until flushed
    print("and to stderr", file=sys.stderr)
    if how == "message":
        sys.exit("stopped: a message")
    if how == "fail":
        raise click.ClickException("a failure")

run_as_program(command)
"""


@pytest.mark.parametrize("how,status,error", [("ok", 0, ""), ("fail", 1, "Error: a failure"),
                                              ("message", 1, "stopped: a message")])
def test_a_program_ends_with_its_status_and_every_line_written(how, status, error):
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", PROGRAM, how], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=buffered)
    assert done.returncode == status, done.stderr
    assert done.stdout == "written before the end\n"
    assert done.stderr.startswith("and to stderr\n") and error in done.stderr, done.stderr


def test_a_program_given_bad_options_ends_with_click_s_usage_status():
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Missing argument" in done.stderr, done.stderr
