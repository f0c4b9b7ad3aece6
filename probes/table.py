"""Plain-text tables for the probes' command-line output."""
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


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Rows of dicts as an aligned table; `columns` lists (header, key) pairs in order."""
    cells = [[header for header, _ in columns]]
    cells += [[format_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
