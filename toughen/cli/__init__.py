"""The command line: a thin layer over the public functions.

    toughen train --data mnist5k --recipe pgd --eps 0.3 --out runs/pgd
    toughen eval runs/pgd --attack pgd --steps 100 --json
    toughen demo --out runs/demo

One module per command (train, evaluate, audit, demo, report, sweep), the flags they share in
common; here the app, and main(): the one error path.
"""

from __future__ import annotations

import os
import sys

import typer
import yaml
from rich.markup import escape

from toughen.cli import audit, certify, demo, evaluate, report, sweep, train
from toughen.cli.common import with_recipe_flags
from toughen.console import err
from toughen.errors import ToughenUsageError

def _options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error "
                                        "(also TOUGHEN_DEBUG=1).")) -> None:
    if debug:
        os.environ["TOUGHEN_DEBUG"] = "1"


def build_app() -> typer.Typer:
    """The app, its commands in `toughen --help`'s order. Built from the registries as they are
    now: ``train`` has a flag for each recipe parameter declared so far (common.with_recipe_flags)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help=__doc__.split("\n\n")[0])
    app.callback()(_options)
    app.command("train")(with_recipe_flags(train.train))
    app.command("eval")(evaluate.eval_)
    app.command("certify")(certify.certify)
    app.command("audit")(audit.audit)
    app.command("demo")(demo.demo)
    app.command("demo-text")(demo.demo_text)
    app.command("report")(report.report)
    app.command("sweep")(sweep.sweep)
    return app


app = build_app()


def main() -> None:
    """The one error path: bad input (exit 2) and a failing environment (exit 1) become one line
    that says what to do; the traceback only with --debug or TOUGHEN_DEBUG=1."""
    try:
        # built now, not at import: recipes registered before main() runs (a user's own entry point
        # that imports its recipes, then calls main) get their flags too
        code = build_app()(standalone_mode=False)
    except ToughenUsageError as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 - anything else: one line, the traceback on request
        kind = _click_kind(e)
        if kind == "NoArgsIsHelpError":  # `toughen` alone: the help, as typer prints it
            print(e.format_message())
            sys.exit(0)
        if kind == "UsageError":  # a flag typer could not parse: one line too, with the hint to --help
            command = e.ctx.command_path if getattr(e, "ctx", None) is not None else "toughen"
            _fail(f"{e.format_message()} (see '{command} --help')", e.exit_code)
        if kind == "Abort":  # click turns Ctrl-C and any EOFError (a truncated file, too) into Abort
            if not isinstance(e.__cause__, EOFError):
                _fail("interrupted", 130)
            e = e.__cause__
        if os.environ.get("TOUGHEN_DEBUG") == "1":
            raise e
        message, code = explain(e)
        _fail(message + " (run with --debug for the traceback)", code)
    sys.exit(code if isinstance(code, int) else 0)  # as click's standalone mode does; typer.Exit(code) too


def _fail(message: str, code: int = 2) -> None:
    # escape: a message may hold brackets, e.g. pip install 'toughen[tensorboard]', that rich would eat as markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _click_kind(e: BaseException) -> str | None:
    """Which of click's exceptions ``e`` is ("UsageError", "NoArgsIsHelpError", "Abort"), by class
    name: typer raises either click's or its own vendored copy of them, depending on its version."""
    names = [c.__name__ for c in type(e).__mro__]
    return next((kind for kind in ("NoArgsIsHelpError", "UsageError", "Abort") if kind in names), None)


def explain(e: BaseException) -> tuple[str, int]:
    """A one-line message and exit code for an exception that is not a ToughenUsageError: a file
    that cannot be read or written, a corrupted file, or a bug."""
    import errno
    import pickle

    from safetensors import SafetensorError

    if isinstance(e, FileNotFoundError):
        return str(e), 2
    if isinstance(e, OSError):
        hints = {errno.ENOSPC: "the disk is full: free some space and run it again",
                 errno.EROFS: "the file system is read-only: choose an --out on a writable one",
                 errno.EACCES: "permission denied: choose an --out you can write to",
                 errno.ENAMETOOLONG: "a file name is too long: choose a shorter --out"}
        where = f" ({e.filename})" if e.filename else ""
        return f"{hints.get(e.errno, e.strerror or str(e))}{where}", 1
    first_line = (str(e).strip().splitlines() or [""])[0][:200]
    if isinstance(e, (SafetensorError, pickle.UnpicklingError, EOFError)):
        return f"a file toughen read is corrupted or not what it should be ({type(e).__name__}: {first_line}); " \
               "replace it, or train the run again", 2
    if isinstance(e, yaml.YAMLError):
        return f"a YAML file is malformed: {' '.join(str(e).split())}", 2
    return f"unexpected {type(e).__name__}: {first_line}", 1
