"""Writing files so that nothing is ever half-written: a temporary file beside the target, renamed over it.

A reader, or a crash, sees either the old file or the new one. A process killed mid-write (SIGKILL,
power loss) leaves its temporary file behind: `stale_temporaries` finds those whose writer is gone.
Reading a JSON record back checks that it is one, naming the file when it is not; whether an output
path can be written at all is found out before the work that produces it (`unwritable_reason`).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from pathlib import Path

# .<target name>.<pid of the writer>.<8 hex digits>.tmp, as atomic_write names its temporary files
TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def atomic_write(path: str | Path, write) -> None:
    """Call write(handle) on a temporary binary file beside `path`, then rename it over `path`.

    The temporary file is created like any other file (umask permissions, unlike mkstemp's 0600).
    """
    path = Path(path)
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


def unwritable_reason(path: str | Path, directory: bool = False) -> str | None:
    """Why `path` cannot be written as a file (with `directory`: made a directory and filled), or None.

    Found by creating and removing a temporary file where the output would go, so it is the
    operating system's answer (permissions, read-only mounts, a full inode table).
    """
    path = Path(path)
    if directory:
        home = path
        while not home.exists() and home != home.parent:  # the nearest ancestor that exists
            home = home.parent
    elif path.is_dir():
        return "it is a directory"
    else:
        home = path.parent
    if not home.is_dir():
        return f"{home} is not a directory" if home.exists() else f"{home} does not exist"
    try:
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as error:
        return f"{home} does not accept new files ({error.strerror or error})"
    return None


def _running(pid: int) -> bool:
    """Whether process `pid` exists (another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def stale_temporaries(directory: str | Path, targets) -> list[Path]:
    """atomic_write's temporary files of `targets` in `directory` whose writing process has ended."""
    found = []
    for path in Path(directory).glob(".*.tmp"):
        match = TEMPORARY.fullmatch(path.name)
        if match and match["target"] in targets and not _running(int(match["pid"])):
            found.append(path)
    return sorted(found)


def read_json_object(path: str | Path) -> dict:
    """The JSON object in `path`; ValueError naming the file when it is missing, not JSON or not an object."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object (it holds a {type(value).__name__})")
    return value


def json_bytes(value) -> bytes:
    """Indented JSON and a final newline; values JSON cannot hold (a path, a dtype) as their str."""
    return (json.dumps(value, indent=2, default=str) + "\n").encode()


def write_json(path: str | Path, value) -> None:
    """Write `value` as JSON to `path` atomically."""
    atomic_write(path, lambda handle: handle.write(json_bytes(value)))
