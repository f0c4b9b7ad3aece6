"""Every command line given malformed input: one "Error: ..." line, no traceback, nothing run.

Each tool has a table of options and values it must refuse (non-finite and overflowing numbers,
out-of-range counts, unknown choices, paths it cannot read or write, damaged input files). Every
entry runs in this process through click's test runner (fast: the tools fail while checking their
options); a hypothesis property combines several malformed options at once; and a few entries run
as real subprocesses (`python tools/NAME.py ...`), one per tool in CI, SYMBREAK_FUZZ_EXAMPLES per
tool when set. An output path that cannot be written is refused before any work starts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from test_fuzz_settings import fuzz
from tools import bench, experiment, probe, report, run

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {"run": run.main, "probe": probe.cli, "bench": bench.cli, "experiment": experiment.main,
            "report": report.main}

NUMBERS = ["nan", "inf", "-inf", "1e400", "x", ""]
COUNTS = ["0", "-1", "x", "1.5", "nan"]
SEEDS = ["-1", str(2**32), str(2**40), "x"]

# Arguments every invocation of a tool starts with: small work, should a check be missing.
BASE = {
    "run": ["--net", "mlp", "--widen", "8", "--batch-size", "512", "--steps", "1"],
    "bench": ["gemm", "--shapes", "tiny", "--modes", "fixed", "--precisions", "fp32", "--warmup", "1",
              "--repeats", "1"],
    "experiment": ["dial", "--dry-run"],
}


def _values(option: str, values) -> list[list[str]]:
    return [[option, value] for value in values]


# Paths the cases point at, as <name> placeholders filled in per test (see `files`).
MISSING_DIR, UNDER_FILE = "<missing>/out.json", "<file>/out.json"

RUN = [
    *[args for name in ("--lr", "--momentum", "--weight-decay", "--dropout", "--stem-dropout")
      for args in _values(name, [*NUMBERS, "-1"])],
    *_values("--momentum", ["1", "1.5"]), *_values("--dropout", ["1", "2"]),
    *[args for name in ("--widen", "--depth", "--splits", "--batch-size") for args in _values(name, COUNTS)],
    *_values("--widen", ["100000000", str(2**64)]), *_values("--depth", ["1000003", str(2**64)]),
    *_values("--seed", SEEDS), *_values("--noise-seed", SEEDS),
    *_values("--lr-milestones", ["x", "1e309", "nan", "-1", "E-x", "E-inf", "inf"]),
    *_values("--device", ["x", "cuda", "cuda:99", "mps", ""]),
    *_values("--net", ["x"]), *_values("--reduction", ["x"]), *_values("--dtype", ["fp64"]),
    *_values("--accumulate", ["fp64"]), *_values("--granularity", ["x"]), *_values("--preset", ["x"]),
    *_values("--init", ["x", "replicas=0", "replicas=2,noise=nan", "replicas=2,noise=inf", "replicas=2,noise=-1"]),
    ["--dataset", "mnist", "--data-dir", "<missing>"],
    ["--out", "<file>/run"],
]
RUN_CONTROL = [["--resume"], ["--resume", "--out", "<empty>"], ["--resume", "--out", "<run_bad_config>"],
               *[["--steps", value] for value in COUNTS], *[["--epochs", value] for value in COUNTS]]
PROBE = [
    *[["repeat", *args] for args in [*_values("--steps", ["0", "-1"]), *_values("--batch", ["0", "-1"]),
                                     *_values("--image-size", ["0", "-1"]), *_values("--runs", ["1"]),
                                     *_values("--seed", SEEDS), *_values("--splits", ["0"]),
                                     *[["--op", "matmul", "--shape", shape] for shape in
                                       ("2x2", "0x0x0", "axbxc", "100000x100000x100000")],
                                     ["--op", "x"], ["--net-option", "depth"], ["--net-option", "depth=2"]]],
    *[["reveal", *args] for args in [*_values("--k", ["0", "1", "-1"]), *_values("--calls", ["x", "-1"]),
                                     *_values("--repeat", ["0", "-1"]), *_values("--splits", ["0"])]],
    *[["noise", *args] for args in [*_values("--ops", ["x"]), *_values("--modes", ["x"]),
                                    *_values("--precisions", ["fp64"]), *_values("--splits", ["0", "-1"]),
                                    *_values("--repeats", ["0", "-1"]), ["--ops", "matmul", "--shape", "0x0x0"]]],
    *[["audit", *args] for args in [*_values("--runs", ["0", "1"]), *_values("--batch", ["0"])]],
    *[["symmetry", *args] for args in [*_values("--checkpoint", ["<bad_json>", "<random>"]),
                                       *_values("--max-rows", ["0", "1", "-1"]), *_values("--kind", ["x"])]],
    *[["fingerprint", "--out", path] for path in (MISSING_DIR, UNDER_FILE, "<empty>")],
    *[["compare", *pair] for pair in [("<list_json>", "<list_json>"), ("<bad_json>", "<bad_json>"),
                                      ("<object_json>", "<list_json>"), ("<missing>", "<object_json>")]],
    *[["device", "--json", path] for path in (MISSING_DIR, UNDER_FILE)],
    *[[command, "--device", device] for command in ("repeat", "reveal", "noise", "audit")
      for device in ("x", "cuda", "cuda:99")],
]
BENCH = [
    *_values("--device", ["cuda", "x", "cuda:99"]), *_values("--backend", ["triton", "x"]),
    *_values("--json", [MISSING_DIR, UNDER_FILE, "<empty>"]),
    *_values("--shapes", ["x"]), *_values("--modes", ["x", ""]), *_values("--precisions", ["fp64", "x"]),
    *_values("--splits", ["1", "0"]), *_values("--warmup", ["0"]), *_values("--repeats", ["0", "-1"]),
    *_values("--accumulate", ["fp64"]),
]
EXPERIMENT = [
    ["--jobs", "0"], ["--seeds", "x"], ["--seeds", "-1"], ["--seeds", ","], ["--scale", "x"],
    *_values("--run-timeout", ["nan", "-1", "0", "inf", "x"]), ["--out", "<file>"], ["--out", "<file>/sub"],
]
REPORT = [
    ["<missing>"], ["<file>"], ["<empty>"], ["<run_list_config>"], ["<run_bad_config>"], ["<run_bad_summary>"],
    ["<run_bad_symmetry>"], ["<empty>", "<empty>"], ["<run_bad_summary>", "--out", "<file>"],
    ["<run_bad_summary>", "--out", "<file>/sub"],
]
# (tool, the full argument list, the malformed option: the last one given)
CASES = [(tool, [*base, *args], next((arg for arg in reversed(args) if arg.startswith("--")), None))
         for tool, base, cases in [("run", BASE["run"], RUN), ("run", BASE["run"][:-2], RUN_CONTROL),
                                   ("probe", [], PROBE), ("bench", BASE["bench"], BENCH), ("bench", [], [["x"]]),
                                   ("experiment", BASE["experiment"], EXPERIMENT), ("experiment", [], [["x"]]),
                                   ("report", [], REPORT)]
         for args in cases]
# Options whose refusal may name the file, or the faulty part of the value, rather than the option.
NAMES_THE_VALUE = ("--out", "--json", "--checkpoint", "--data-dir", "--resume", "--init", "--net-option", "--shape")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The paths behind the <name> placeholders."""
    root = tmp_path_factory.mktemp("malformed")
    paths = {name: root / name for name in ("missing", "file", "empty", "bad_json", "list_json", "object_json",
                                            "random")}
    paths["file"].write_text("not a directory")
    paths["empty"].mkdir()
    paths["bad_json"].write_text("{garbage")
    paths["list_json"].write_text("[1, 2]")
    paths["object_json"].write_text(json.dumps({"entries": "none"}))
    paths["random"].write_bytes(os.urandom(2000))
    for name, content in {"run_list_config": {"config.json": "[1, 2]"},
                          "run_bad_config": {"config.json": "{oops"},
                          "run_bad_summary": {"config.json": json.dumps({"options": {}}), "summary.json": "[]"},
                          "run_bad_symmetry": {"config.json": json.dumps({"options": {}}),
                                               "symmetry.jsonl": "{not json\n"}}.items():
        paths[name] = root / "runs" / name
        paths[name].mkdir(parents=True)
        for file_name, text in content.items():
            (paths[name] / file_name).write_text(text)
    return paths


def fill(args: list[str], files: dict[str, Path]) -> list[str]:
    """The arguments with their <name> placeholders replaced by the prepared paths."""
    filled = []
    for arg in args:
        for name, path in files.items():
            arg = arg.replace(f"<{name}>", str(path))
        filled.append(arg)
    return filled


def assert_refused(output: str, exit_code: int, exception: BaseException | None) -> None:
    """A failed command: exit code 1 or 2, exactly one Error line, no traceback."""
    assert exception is None or isinstance(exception, SystemExit), f"{exception!r}\n{output}"
    assert exit_code in (1, 2), output
    assert "Traceback" not in output and "Aborted!" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and len(errors[0]) > len("Error: "), output


@pytest.mark.parametrize("tool, args, option", CASES, ids=[f"{tool} {' '.join(args)}" for tool, args, _ in CASES])
def test_malformed_input_is_one_line(tool, args, option, files):
    result = CliRunner().invoke(PROGRAMS[tool], fill(args, files))
    assert_refused(result.output, result.exit_code, result.exception)
    if option is not None and option not in NAMES_THE_VALUE:
        assert option in result.output or option.lstrip("-") in result.output, result.output


@fuzz(15)
@given(picks=st.lists(st.sampled_from(RUN), min_size=2, max_size=4))
def test_several_malformed_run_options_at_once(picks, tmp_path_factory):
    files = {"missing": tmp_path_factory.getbasetemp() / "missing", "file": Path(__file__)}
    result = CliRunner().invoke(run.main, fill([*BASE["run"], *[arg for case in picks for arg in case]], files))
    assert_refused(result.output, result.exit_code, result.exception)


@pytest.mark.parametrize("tool", PROGRAMS)
@fuzz(1)
@given(data=st.data())
def test_malformed_input_in_a_real_process(tool, data, files):
    args = data.draw(st.sampled_from([args for name, args, _ in CASES if name == tool]))
    result = subprocess.run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), *fill(args, files)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert_refused(result.stdout + result.stderr, result.returncode, None)
