"""The run directory: where a run's record lives, written so that nothing is ever half-written or lost.

Whole files (JSON, the checkpoint, rewritten JSON-lines files) are written to a temporary file
in the same directory and renamed over the target, so a reader, or a crash, sees either the old
file or the new one. A directory that already holds a run is refused unless the caller resumes
it or explicitly asks to overwrite it. Files that cannot be read back as expected, or written (a
full disk), raise RunDirError naming the file; temporary files of writers that were killed are
removed whenever a run starts in the directory.
"""
from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..files import atomic_write, read_json_object, stale_temporaries, write_json

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
SYMMETRY = "symmetry.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
PLOTS = "plots"
RUN_FILES = (CONFIG, ENV, METRICS, SYMMETRY, SUMMARY, CHECKPOINT)


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, missing, unwritable, damaged)."""


class RunDirWriteError(RunDirError):
    """A file of the run directory could not be written (a full disk, a vanished mount)."""


@contextmanager
def _writing(path: Path):
    try:
        yield
    except OSError as error:
        raise RunDirWriteError(f"cannot write {path}: {error.strerror or error}") from None


class _WriteErrors:
    """A file handle that keeps the OSError of a failed write (torch.save reports it as a RuntimeError)."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(value, handle) -> None:
    keeper = _WriteErrors(handle)
    try:
        torch.save(value, keeper)
    except RuntimeError:
        if keeper.error is None:
            raise
        raise keeper.error from None


def default_run_dir(net: str, reduction: str, dtype: str, root: str | Path = "runs") -> Path:
    """runs/<timestamp>-<net>-<reduction>-<dtype>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{net}-{reduction}-{dtype}"


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
        with _writing(self.file(name)):
            write_json(self.file(name), value)

    def read_json(self, name: str) -> dict:
        """A JSON object the run wrote (RunDirError naming the file when it is missing or damaged)."""
        try:
            return read_json_object(self.file(name))
        except ValueError as error:
            raise RunDirError(str(error)) from None

    def write_jsonl(self, name: str, records) -> None:
        """Replace a JSON-lines file with `records` (used when a resumed run restores its history)."""
        with _writing(self.file(name)):
            atomic_write(self.file(name), lambda handle: handle.write(_jsonl_bytes(records)))

    def append_jsonl(self, name: str, record: dict) -> None:
        with _writing(self.file(name)), open(self.file(name), "ab") as handle:
            handle.write(_jsonl_bytes([record]))

    def save_torch(self, name: str, value) -> None:
        with _writing(self.file(name)):
            atomic_write(self.file(name), lambda handle: _torch_save(value, handle))

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
        if not run_dir.file(CONFIG).is_file():
            raise RunDirError(f"nothing to resume in {run_dir.path}: it has no {CONFIG}")
    elif run_dir.holds_run():
        if not overwrite:
            raise RunDirError(
                f"{run_dir.path} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        run_dir.clear()
    for orphan in stale_temporaries(run_dir.path, RUN_FILES):
        orphan.unlink(missing_ok=True)
    try:
        run_dir.plots.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir.path):
            pass
    except OSError as error:
        raise RunDirError(f"cannot write to --out {run_dir.path}: {error.strerror or error}") from None
    return run_dir
