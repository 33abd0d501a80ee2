"""The CLI's two rich consoles (results on stdout, progress and errors on stderr)."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Piped into a file or `tee` (as `make demo` often is), rich assumes 80 columns and cuts the
# tables' recipe and attack names to a few letters; a log file has room for the whole table.
PIPED_WIDTH = 140


def _console(stream) -> Console:
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stream is sys.stderr, width=width)


out = _console(sys.stdout)
err = _console(sys.stderr)
