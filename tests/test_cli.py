"""The command lines as one installed program (`symbreak`) and as scripts run from any directory."""
from __future__ import annotations

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
