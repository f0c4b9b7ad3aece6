"""tools/bench.py end to end on tiny shapes: the table, the JSON rows and the device record."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tools.bench import cli

TABLE_COLUMNS = ("case", "role", "M x N x K", "mode", "ours ms", "torch ms", "ours TF/s", "torch TF/s", "ratio")


def bench(*args: str) -> subprocess.CompletedProcess:
    """tools/bench.py's exit code, table (stdout) and progress (stderr), run in this process."""
    result = CliRunner().invoke(cli, list(args))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def check_output(result: subprocess.CompletedProcess, json_path: Path, kind: str, expected_rows: int) -> list[dict]:
    assert result.returncode == 0, result.stderr[-3000:]
    header = result.stdout.splitlines()[0]
    for column in TABLE_COLUMNS:
        assert column in header, f"table header lacks {column!r}: {header!r}"
    payload = json.loads(json_path.read_text())
    assert payload["kind"] == kind
    assert payload["device"] and "CPU" in payload["device"], payload["device"]
    assert payload["device_record"]["host"]["cpu_model"]
    assert payload["settings"]["backend"] == "emulate", "auto resolves to emulate for CPU tensors"
    rows = payload["rows"]
    assert len(rows) == expected_rows
    assert len(result.stdout.splitlines()) == 2 + expected_rows, "one table line per row"
    for row in rows:
        assert row["ours_ms"] > 0 and row["torch_ms"] > 0, row
        assert row["ratio"] == pytest.approx(row["ours_ms"] / row["torch_ms"], rel=2e-2, abs=2e-3), row
        flops = 2 * row["m"] * row["n"] * row["k"]
        assert row["ours_tflops"] == pytest.approx(flops / row["ours_ms"] / 1e9, rel=2e-2, abs=1e-6), row
        assert row["splits"] == (1 if row["mode"] == "fixed" else 4), row
    return rows


def test_gemm_bench_writes_table_and_json(tmp_path):
    json_path = tmp_path / "gemm.json"
    result = bench("gemm", "--shapes", "tiny", "--modes", "fixed,splitk,atomic", "--precisions", "fp32,bf16",
                   "--splits", "4", "--warmup", "1", "--repeats", "2", "--json", str(json_path))
    rows = check_output(result, json_path, "gemm", expected_rows=2 * 3 * 2)
    assert {(row["m"], row["n"], row["k"]) for row in rows} == {(64, 64, 64), (16, 144, 512)}
    assert {row["precision"] for row in rows} == {"fp32", "bf16"}


def test_conv_bench_covers_every_role(tmp_path):
    json_path = tmp_path / "conv.json"
    result = bench("conv", "--shapes", "tiny", "--modes", "fixed,splitk", "--splits", "4", "--warmup", "1",
                   "--repeats", "1", "--json", str(json_path))
    rows = check_output(result, json_path, "conv", expected_rows=3 * 2)
    assert {row["role"] for row in rows} == {"forward", "input_grad", "weight_grad"}
    weight_grad = next(row for row in rows if row["role"] == "weight_grad")
    assert (weight_grad["m"], weight_grad["n"], weight_grad["k"]) == (8, 8 * 9, 2 * 8 * 8), "C_out x C_in*9, K = N*H*W"


def test_bench_rejects_unknown_choices():
    result = bench("gemm", "--shapes", "tiny", "--modes", "fixed,sorted")
    assert result.returncode == 2
    assert "fixed, splitk, atomic" in result.stderr, result.stderr
