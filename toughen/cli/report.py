"""`toughen report`: one HTML page comparing runs, a thin layer over toughen.report.build_report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from toughen.cli.common import out_path
from toughen.console import out
from toughen.errors import ToughenUsageError


def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories, or sweep directories (standing for their runs)."),
    out_file: Optional[Path] = typer.Option(
        None, "--out", parser=out_path, help="HTML file to write; default RUN_DIR/report.html for one directory, else report.html."
    ),
    gallery: bool = typer.Option(True, help="Attack a few test inputs of each run for the example gallery."),
    gallery_n: int = typer.Option(10, help="Test inputs in each run's gallery (one per class in turn)."),
    gallery_steps: int = typer.Option(20, help="PGD steps for the gallery's adversarial examples."),
    device: str = typer.Option("cpu", help="Device for the gallery's attack."),
) -> None:
    """Write one self-contained HTML report comparing runs: summary, trade-off, curves, examples, audit."""
    from toughen.report import build_report
    from toughen.runtime import check_device

    if gallery_n < 1 or gallery_steps < 0:
        raise ToughenUsageError("--gallery-n must be >= 1 and --gallery-steps >= 0")
    check_device(device)
    if out_file is None:
        out_file = run_dirs[0] / "report.html" if len(run_dirs) == 1 else Path("report.html")
    _check_report_out(out_file)
    path = build_report(run_dirs, out_file, gallery=gallery, gallery_n=gallery_n, gallery_steps=gallery_steps,
                        device=device)
    out.print(f"wrote {path}", highlight=False)


def _check_report_out(out_file: Path) -> None:
    """The report is one HTML file: never a directory, and never one of a run's own files."""
    from toughen.runs import RUN_FILES

    if out_file.is_dir():
        raise ToughenUsageError(f"--out {out_file} is a directory; give a file name such as {out_file / 'report.html'}")
    if out_file.name in RUN_FILES and out_file.name != "report.html" and (out_file.parent / "config.yaml").is_file():
        raise ToughenUsageError(f"--out {out_file} is a file of the run in {out_file.parent}; the report would replace "
                                "it: give another name, such as report.html")
    if out_file.suffix.lower() not in (".html", ".htm"):
        raise ToughenUsageError(f"--out {out_file} does not end in .html; the report is an HTML page")
