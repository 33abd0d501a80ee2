"""How toughen shows things to people: the CLI's two rich consoles (results on stdout, progress
and errors on stderr), its tables, and text with its invisible characters made visible."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Piped into a file or `tee` (as `make demo` often is), rich assumes 80 columns and cuts the
# tables' recipe and attack names to a few letters; a log file has room for the whole table.
PIPED_WIDTH = 140


def _console(stream) -> Console:
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stream is sys.stderr, width=width)


def fmt_number(value: Any) -> str:
    """A number as people read it in a table or a name: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def reveal(text: str) -> str:
    """``text`` with every non-ASCII character as a \\u escape, so that homoglyphs and
    zero-width characters, which a terminal or a browser draws invisibly or identically, show."""
    return ascii(text)[1:-1]


out = _console(sys.stdout)
err = _console(sys.stderr)


def print_table(title: str, rows: list[dict], columns: tuple[str, ...], *, names: tuple[str, ...],
                short: tuple[str, ...] = (), missing: str | None = None) -> None:
    """``rows`` as a table on ``out``, with those of ``columns`` that any row has. The ``names``
    columns are left-aligned and never cut (a cut attack name says nothing; numeric headers wrap
    instead); accuracies and rates print as percentages, the ``short`` columns' floats to three
    significant digits, other floats to one decimal. ``missing``, when given, stands for an absent
    or None value."""
    # Text, not str: a run path or a text example may hold "[/]", which rich would read as markup
    table = Table(title=Text(title))
    shown = [c for c in columns if any(c in r for r in rows)]
    body = [_cells(r, shown, short, missing) for r in rows]
    for i, c in enumerate(shown):
        # a number is never cut ("97.…" says nothing): its column is as wide as its widest cell,
        # and the header wraps instead; other text (not a name) may wrap
        number = all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows)
        table.add_column(c.replace("_", " "), justify="right" if number else "left", no_wrap=c in names,
                         min_width=max(len(row[i]) for row in body) if number and body else None)
    for cells in body:
        table.add_row(*(Text(c) for c in cells))
    out.print(table)


def _cells(r: dict, shown: list[str], short: tuple[str, ...], missing: str | None) -> list[str]:
    """One row's cells as print_table shows them."""
    cells = []
    for c in shown:
        v = r.get(c, "")
        if missing is not None and (v == "" or v is None):
            cells.append(missing)
        elif c.endswith(("accuracy", "rate")):
            cells.append(f"{100 * v:.1f}%")
        elif isinstance(v, float):
            cells.append(f"{v:.3g}" if c in short else f"{v:.1f}")
        else:
            cells.append(str(v))
    return cells
