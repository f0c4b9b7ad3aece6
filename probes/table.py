"""Plain-text tables: the one aligner every table of the project's text output goes through."""
from __future__ import annotations


def format_cell(value) -> str:
    """Floats in 4 significant digits (integers as integers), None as "-", everything else as str."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def _widths(lines: list[list[str]]) -> list[int]:
    return [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]


def align(lines: list[list[str]]) -> list[str]:
    """Rows of text cells as lines whose columns line up (two spaces between columns)."""
    widths = _widths(lines)
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Rows of dicts as an aligned table under a rule; `columns` lists (header, key) pairs in order."""
    cells = [[header for header, _ in columns]] + [[format_cell(row.get(key)) for _, key in columns] for row in rows]
    lines = align(cells)
    lines.insert(1, "  ".join("-" * width for width in _widths(cells)))
    return "\n".join(lines)
