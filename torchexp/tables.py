"""A comparison table as text: aligned for a terminal, CSV, Markdown or JSON (`compare`'s
output formats). The table itself is built by `torchexp.compare`."""

import csv
import io
import json
import re
from typing import Any

from torchexp.compare import Column, Table, format_cell
from torchexp.metrics import is_number

MIN_TEXT_WIDTH = 8  # text columns are cut to no less than this to fit the terminal
COLUMN_GAP = "  "
SHORT_HEADER = 12  # headers up to this long stay on one line


def format_json(table: Table) -> str:
    """`compare --json`: an array of rows (the schema is in the README)."""
    return json.dumps([summary.to_json(table.keys) for summary in table.summaries], indent=2, allow_nan=False)


def format_csv(table: Table) -> str:
    """`compare --csv`: one row per experiment, full-precision numbers, and a column
    `<metric> epoch` after each metric that comes from an epoch."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = []
    for column in table.columns:
        header += [column.name, f"{column.name} epoch"] if column.epoch else [column.name]
    writer.writerow(header)
    for summary in table.summaries:
        cells = []
        for column in table.columns:
            cells.append(csv_value(column.value(summary)))
            if column.epoch:
                cells.append(csv_value(column.epoch(summary)))
        writer.writerow(cells)
    return out.getvalue()


def csv_value(value: Any) -> str:
    """A CSV cell: empty for a missing value, repr for numbers, JSON for lists and booleans."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if is_number(value):
        return repr(value)
    return json.dumps(value)


def format_markdown(table: Table) -> str:
    """`compare --md`: a GitHub table, numbers aligned right."""
    lines = [
        "| " + " | ".join(escape_markdown(c.name) for c in table.columns) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in table.columns) + "|",
    ]
    for summary in table.summaries:
        lines.append("| " + " | ".join(escape_markdown(format_cell(c, summary)) for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def escape_markdown(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def format_text(table: Table, width: int | None = None) -> str:
    """The aligned table for a terminal, `dvc exp show` style: headers wrapped over a few
    lines at spaces and dots, names and text config values cut with "…" until the table
    fits `width` (None: no limit), and a note under it for each folder that is broken.
    """
    cells = [[format_cell(c, s) for s in table.summaries] for c in table.columns]
    widths = [max(map(len, column_cells), default=0) for column_cells in cells]
    widths = [max(w, header_width(c.name)) for c, w in zip(table.columns, widths, strict=True)]
    if width is not None:
        fit_widths(widths, [c.cuttable for c in table.columns], width)
    headers = [wrap_header(c.name, w) for c, w in zip(table.columns, widths, strict=True)]
    height = max(map(len, headers))
    lines = []
    for line in range(height):
        # Headers sit on the bottom lines, next to the rule.
        parts = [(h[line - height + len(h)] if line >= height - len(h) else "") for h in headers]
        lines.append(join_cells(parts, widths, table.columns))
    lines.append(COLUMN_GAP.join("─" * w for w in widths))
    for row in range(len(table.summaries)):
        row_cells = [cut(column_cells[row], w) for column_cells, w in zip(cells, widths, strict=True)]
        lines.append(join_cells(row_cells, widths, table.columns))
    notes = [f"{s.name}: {s.problem}" for s in table.summaries if s.problem]
    return "\n".join([line.rstrip() for line in lines] + notes) + "\n"


def join_cells(parts: list[str], widths: list[int], columns: list[Column]) -> str:
    aligned = (part.rjust(w) if c.numeric else part.ljust(w) for part, w, c in zip(parts, widths, columns, strict=True))
    return COLUMN_GAP.join(aligned)


def header_width(name: str) -> int:
    """The least width of a header's column: the header itself when short, else its
    longest piece, so that long headers wrap rather than widen their column."""
    if len(name) <= SHORT_HEADER:
        return len(name)
    return max(len(piece.rstrip()) for piece in split_header(name))


def split_header(name: str) -> list[str]:
    """A header's pieces, each ending at a space or after a dot: where it may wrap."""
    return re.findall(r"[^ .]*(?:\.| |$)", name)[:-1] or [name]


def wrap_header(name: str, width: int) -> list[str]:
    """A header over as few lines as fit `width`, broken only at spaces and after dots."""
    lines = [""]
    for piece in split_header(name):
        if lines[-1] and len((lines[-1] + piece).rstrip()) > width:
            lines.append("")
        lines[-1] += piece
    return [cut(line.rstrip(), width) for line in lines]


def fit_widths(widths: list[int], cuttable: list[bool], limit: int) -> None:
    """Narrow the widest cuttable columns, one character at a time, until the table fits
    `limit` or each is down to MIN_TEXT_WIDTH."""
    while sum(widths) + len(COLUMN_GAP) * (len(widths) - 1) > limit:
        candidates = [i for i, w in enumerate(widths) if cuttable[i] and w > MIN_TEXT_WIDTH]
        if not candidates:
            return
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1


def cut(text: str, width: int) -> str:
    """`text`, cut to `width` characters with "…" when longer."""
    return text if len(text) <= width else text[: width - 1] + "…"
