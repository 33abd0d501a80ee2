"""What the commands share: reading flags (numbers, --out, a --config file) and printing rows."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import yaml

from toughen.console import print_table
from toughen.errors import ToughenUsageError


def parse_number(text: str | None, name: str) -> float | None:
    """Accept 0.3, 8/255 and the like; None (a flag not given) stays None."""
    if text is None:
        return None
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ToughenUsageError(f"{name} must be a number such as 0.3 or 8/255, got {text!r}") from None


def out_path(text: str) -> Path:
    """--out as a Path; an empty one is refused here, because Path("") is the current directory."""
    if not str(text).strip():
        raise ToughenUsageError("--out is empty; give the directory (or, for report, the file) to write")
    return Path(text)


def read_config_file(path: Path) -> dict[str, Any]:
    """A --config YAML file: a mapping of TrainConfig fields (checked by TrainConfig.validate)."""
    if not path.is_file():
        raise ToughenUsageError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ToughenUsageError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(values, dict):
        raise ToughenUsageError(f"config file {path}: a config is a mapping of keys to values, got "
                                f"{type(values).__name__}")
    return values


def with_recipe_flags(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with one flag per declared recipe parameter (toughen.train._registry), placed
    after its ``--step-size`` and passed to it as keyword arguments (None when not given).

    typer builds flags from a function's signature, so the flags of recipes registered so far are
    added to the signature when the app is built: a new recipe's parameters reach the CLI from
    their declaration alone. (jsonargparse builds flags from dataclasses natively, but it would be
    a second CLI framework beside typer for one command's dozen flags.)"""
    from toughen.train._registry import declared_parameters

    signature = inspect.signature(command, eval_str=True)
    base = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = next(i for i, p in enumerate(base) if p.name == "step_size") + 1
    extra = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=_recipe_flag(p),
                               annotation=Optional[str if p.kind is float else p.kind])
             for p in declared_parameters().values()]

    def with_flags(**values: Any) -> None:
        return command(**values)

    with_flags.__signature__ = signature.replace(parameters=base[:at] + extra + base[at:])  # type: ignore[attr-defined]
    with_flags.__annotations__ = {}
    with_flags.__doc__, with_flags.__name__ = command.__doc__, command.__name__
    return with_flags


def _recipe_flag(p) -> Any:
    dashed = "--" + p.name.replace("_", "-")
    default = "" if p.default is None else f"; default {p.default}".replace("True", "on").replace("False", "off")
    text = f"{p.doc.rstrip('.')} ({'/'.join(p.recipes)}{default})."
    if p.kind is bool:
        return typer.Option(None, f"{dashed}/--no-{p.name.replace('_', '-')}", help=text)
    return typer.Option(None, dashed, help=text, metavar="FLOAT" if p.kind is float else None)


def recipe_values(flags: dict[str, Any]) -> dict[str, Any]:
    """The recipe-parameter flags the user gave, parsed: numbers such as 8/255 for float ones."""
    from toughen.train._registry import declared_parameters

    declared = declared_parameters()
    return given(**{name: parse_number(value, "--" + name.replace("_", "-")) if declared[name].kind is float
                    else value for name, value in flags.items() if name in declared})


def given(**flags: Any) -> dict[str, Any]:
    """The flags the user gave: a flag left out is None and leaves the config's value alone."""
    return {k: v for k, v in flags.items() if v is not None}


def main_process() -> bool:
    """False in the processes of a torchrun job other than rank 0: they print nothing."""
    from toughen.runtime import from_env

    return from_env().is_main


def print_rows(title: str, rows: list[dict]) -> None:
    """Summaries or evaluations as one table, the columns toughen shows in a fixed order."""
    # a summary's or an evaluation's precision record shows as its label: "bf16+CL" (CL: channels-last)
    rows = [{**r, "precision": r["precision"]["label"]} if isinstance(r.get("precision"), dict) else r for r in rows]
    print_table(title, rows, ("run", "recipe", "lam", "beta", "attack", "robust_attack", "method", "eps", "norm",
                              "precision", "clean_accuracy", "robust_accuracy", "certified_accuracy", "n", "n_test",
                              "train_seconds", "seconds", "status"),
                names=("run", "recipe", "attack", "method", "status"), short=("eps", "lam", "beta"), missing="—")
