"""The GPU check's results on disk: each part's rows as JSON lines, assembled into report.json
and report.md after every part, so that a run killed at any point leaves what it measured."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..files import atomic_write

PARTS_DIR = "parts"


def _plain(value):
    """JSON-ready: non-finite floats as text ("inf", "nan"), containers walked, others as str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


class PartSink:
    """Appends a part's rows to DIR/parts/NAME.jsonl, one flushed line each."""

    def __init__(self, out_dir: Path, name: str):
        self.path = Path(out_dir) / PARTS_DIR / f"{name}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_plain(row)) + "\n")


def read_rows(out_dir: Path, name: str) -> list[dict]:
    """The rows a part wrote (a line cut by a kill is dropped)."""
    path = Path(out_dir) / PARTS_DIR / f"{name}.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)[:80]
    return str(value).replace("|", "/")


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def findings(report: dict) -> list[str]:
    """What needs a look: parts that ran and did not finish ok, failed tests (with pytest's message where
    it gave one), rows whose `ok` is false."""
    found = []
    for part in report["parts"]:
        name, rows = part["name"], part["rows"]
        if part["status"] not in ("ok", "not run"):
            found.append(f"{name}: {part['status']}")
        messages = {row["test"]: row["message"] for row in rows if "message" in row}
        for row in rows:
            if row.get("ok") is False:
                found.append(f"{name}: " + ", ".join(f"{key} {_cell(v)}" for key, v in row.items() if key != "ok"))
            elif row.get("outcome") in ("FAILED", "ERROR"):
                message = messages.get(row["test"])
                found.append(f"{name}: {row['test']} {row['outcome']}" + (f": {message}" if message else ""))
    return found


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report.get('device', 'unknown device')}", ""]
    lines += [f"- {key}: {_cell(value)}" for key, value in report["run"].items()]
    found = findings(report)
    lines += ["", "## findings", ""] + ([f"- {item}" for item in found] or ["none: every part ok, every check held"])
    for part in report["parts"]:
        lines += ["", f"## {part['name']}: {part['title']}", "",
                  f"status **{part['status']}**, {part['seconds']} s of {part['timeout_s']} s allowed"]
        if part.get("note"):
            lines += ["", part["note"]]
        if part["rows"]:
            lines += ["", markdown_table(part["rows"])]
        if part.get("log_tail") and part["status"] != "ok":
            lines += ["", "```", part["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict) -> None:
    """DIR/report.json and DIR/report.md, each replaced atomically."""
    report = _plain(report)
    for name, text in (("report.json", json.dumps(report, indent=1) + "\n"), ("report.md", markdown(report))):
        atomic_write(Path(out_dir) / name, lambda handle, text=text: handle.write(text.encode()))
