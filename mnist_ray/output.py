"""Rows printed three ways: a table for people, JSON and CSV for scripts.

from mnist_ray.output import as_table, as_json, as_csv
print(as_csv(["run_id", "lr"], rows))
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from datetime import datetime

from rich.table import Table
from rich.text import Text


def say(line: str) -> None:
    """Progress and diagnostics: one line to stderr, at once (stdout is the result)."""
    print(line, file=sys.stderr, flush=True)


def _plain(value):
    """JSON and CSV: timestamps as ISO 8601, everything else as it is."""
    return value.isoformat() if isinstance(value, datetime) else value


def as_json(document) -> str:
    """Strict JSON (RFC 8259): a NaN or an infinity, which no strict parser takes, is null."""
    return json.dumps(finite(document), default=_json_value, allow_nan=False)


def finite(value):
    """`value` with every non-finite float (at any depth of dicts, lists, tuples) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _json_value(value):
    if isinstance(value, bytes):  # pixels: 0..255 numbers, as sample_pixels prints
        return list(value)
    return _plain(value) if isinstance(value, datetime) else str(value)


def as_csv(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _csv_cell(value):
    if isinstance(value, list):
        return as_json(value)
    if isinstance(value, float) and not math.isfinite(value):
        return ""  # as a null: CSV readers disagree on how NaN is spelt
    return "" if value is None else _plain(value)


def cell(column: str, value) -> str:
    """How a value reads in a table: costs to 9 decimals (the tutorial prints them so),
    accuracy to 4, seconds to 2, long lists shortened."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if "cost" in column:
            return f"{value:.9f}"
        if "accuracy" in column:
            return f"{value:.4f}"
        if "seconds" in column or column.endswith("_mib"):
            return f"{value:.2f}"
        return f"{value:.6g}"
    if isinstance(value, list):
        text = ", ".join(cell(column, v) for v in value[:4])
        return f"[{text}{', ...' if len(value) > 4 else ''}] ({len(value)})"
    return str(value)


# The columns a user copies from a table into the next command: never wrapped nor cut,
# however narrow the terminal (the table grows wider than it instead).
ID_COLUMNS = ("run_id", "eval_id", "sweep_id")


def as_table(title: str, columns: list[str], rows: list[dict]) -> Table:
    table = Table(title=Text(title), title_justify="left")  # Text: brackets stay brackets
    cells = [[cell(c, row.get(c)) for c in columns] for row in rows]
    for i, c in enumerate(columns):
        add_column(table, c, [r[i] for r in cells])  # c: the name --sort and --where take
    for r in cells:
        table.add_row(*map(Text, r))
    return table


def add_column(table: Table, name: str, cells: list[str], **kwargs) -> None:
    """A column of `table`; an id column at least as wide as its longest id."""
    if name in ID_COLUMNS:
        kwargs.update(no_wrap=True, min_width=max(map(len, [name, *cells])))
    table.add_column(name, **kwargs)
