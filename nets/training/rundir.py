"""The run directory: where a run's record lives, written so that nothing is ever half-written or lost.

Whole files (JSON, the checkpoint, rewritten JSON-lines files) are written to a temporary file
in the same directory and renamed over the target, so a reader, or a crash, sees either the old
file or the new one. A directory that already holds a run is refused unless the caller resumes
it or explicitly asks to overwrite it.
"""
from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path

import torch

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
SYMMETRY = "symmetry.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
PLOTS = "plots"
RUN_FILES = (CONFIG, ENV, METRICS, SYMMETRY, SUMMARY, CHECKPOINT)


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, missing, unwritable)."""


def default_run_dir(net: str, reduction: str, dtype: str, root: str | Path = "runs") -> Path:
    """runs/<timestamp>-<net>-<reduction>-<dtype>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{net}-{reduction}-{dtype}"


def _atomic_write(path: Path, write) -> None:
    """Call write(handle) on a temporary file beside `path`, then rename it over `path`.

    The temporary file is created like any other file (umask permissions, unlike mkstemp's 0600).
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False, allow_nan=True) + "\n").encode()


def _jsonl_bytes(records) -> bytes:
    return b"".join((json.dumps(record) + "\n").encode() for record in records)


class RunDir:
    """One run's directory and the atomic writers for its files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    def holds_run(self) -> bool:
        return any(self.file(name).exists() for name in RUN_FILES)

    def write_json(self, name: str, value) -> None:
        _atomic_write(self.file(name), lambda handle: handle.write(_json_bytes(value)))

    def read_json(self, name: str):
        return json.loads(self.file(name).read_text())

    def write_jsonl(self, name: str, records) -> None:
        """Replace a JSON-lines file with `records` (used when a resumed run restores its history)."""
        _atomic_write(self.file(name), lambda handle: handle.write(_jsonl_bytes(records)))

    def append_jsonl(self, name: str, record: dict) -> None:
        with open(self.file(name), "ab") as handle:
            handle.write(_jsonl_bytes([record]))

    def save_torch(self, name: str, value) -> None:
        _atomic_write(self.file(name), lambda handle: torch.save(value, handle))

    def load_torch(self, name: str):
        return torch.load(self.file(name), map_location="cpu", weights_only=False)

    def clear(self) -> None:
        """Remove a previous run's files (only those a run writes) before overwriting it."""
        for name in RUN_FILES:
            self.file(name).unlink(missing_ok=True)
        if self.plots.is_dir():
            for png in self.plots.glob("*.png"):
                png.unlink()


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> RunDir:
    """The run directory, created and checked writable; refuses to clobber or to resume nothing."""
    run_dir = RunDir(path)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: continue the run or replace it")
    if resume:
        if not run_dir.file(CHECKPOINT).is_file() or not run_dir.file(CONFIG).is_file():
            raise RunDirError(f"nothing to resume in {run_dir.path}: it has no {CHECKPOINT} and {CONFIG}")
    elif run_dir.holds_run():
        if not overwrite:
            raise RunDirError(
                f"{run_dir.path} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        run_dir.clear()
    try:
        run_dir.plots.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir.path):
            pass
    except OSError as error:
        raise RunDirError(f"cannot write to --out {run_dir.path}: {error.strerror or error}") from None
    return run_dir
