"""A sweep: one training run per point of a grid, resumable, then one report comparing them.

    toughen sweep --grid "recipe=mix,trades lam=0.5,1,2 beta=1,6 eps=0.1,0.3" --data digits --out sweeps/a

A grid key is any TrainConfig field. A recipe's own parameter (lam for mix, beta for trades, as
declared where the recipe is registered: toughen.train._registry.register_recipe) multiplies only
that recipe's points: the grid above is 3 x 2 mix runs plus 2 x 2 trades runs, 10 in all, not 2 x 3 x 2 x 2 = 24.

Each point is its own run directory under the sweep's, named from its values
(``mix-lam0.5-eps0.1``). A point is finished when its summary.json exists (training writes it
last, atomically), so running the same command again after an interruption trains only the
points that are not.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, Callable

from toughen.console import fmt_number
from toughen.errors import ToughenUsageError
from toughen.runs import LOCK_FILE, RunLock, write_json
from toughen.train import TrainConfig, TrainingDiverged, train
from toughen.train._registry import all_recipe_parameters, recipe_parameters

PLAN_FILE = "sweep.json"


def _parse_value(text: str, key: str, default: Any) -> Any:
    if re.fullmatch(r"[+-]?\d+", text):
        value: Any = int(text)
        return float(value) if isinstance(default, float) else value
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        if "/" in text:  # 8/255
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            raise ToughenUsageError(f"--grid: {key} takes numbers, got {text!r}") from None
        return text


def parse_grid(text: str) -> dict[str, list[Any]]:
    """``"recipe=mix,trades lam=0.5,1"`` -> ``{"recipe": ["mix", "trades"], "lam": [0.5, 1.0]}``."""
    defaults = TrainConfig().to_dict()
    grid: dict[str, list[Any]] = {}
    for token in text.split():
        key, sep, values = token.partition("=")
        if not sep or not key or not values:
            raise ToughenUsageError(f"--grid: {token!r} is not KEY=V1,V2,...; e.g. \"recipe=mix,pgd eps=0.1,0.3\"")
        if key not in defaults or key == "model_options":
            raise ToughenUsageError(f"--grid: unknown key {key!r}; a grid key is a TrainConfig field: "
                                    f"{', '.join(k for k in defaults if k != 'model_options')}")
        if key in grid:
            raise ToughenUsageError(f"--grid: {key} is given twice; list all its values once: {key}=A,B")
        parsed = [_parse_value(v, key, defaults[key]) for v in values.split(",") if v]
        grid[key] = list(dict.fromkeys(parsed))  # 0.1,0.10 is one value, not two runs
    if not grid:
        raise ToughenUsageError("--grid is empty; e.g. --grid \"recipe=standard,pgd eps=0.1,0.3\"")
    return grid


def _point_name(values: dict[str, Any]) -> str:
    parts = [str(values["recipe"])] + [f"{k}{fmt_number(v)}" for k, v in values.items() if k != "recipe"]
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))


def plan(grid: dict[str, list[Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The points of the grid: ``[{"name", "values"}]``, each recipe multiplied only by the keys
    that apply to it. Raises when a recipe parameter applies to none of the sweep's recipes."""
    recipes = grid.get("recipe", [base.get("recipe", TrainConfig.recipe)])
    owners = all_recipe_parameters()
    specific = {p for params in owners.values() for p in params}
    for key in grid:
        if key in specific and not any(key in recipe_parameters(r) for r in recipes):
            users = [r for r, params in owners.items() if key in params]
            raise ToughenUsageError(f"--grid: {key} applies only to the recipe(s) {', '.join(users)}, and the sweep "
                                    f"has none of them ({', '.join(map(str, recipes))}); add one to recipe=...")
    points = []
    for recipe in recipes:
        keys = [k for k in grid if k != "recipe" and (k not in specific or k in recipe_parameters(recipe))]
        for combo in itertools.product(*(grid[k] for k in keys)):
            values = {"recipe": recipe, **dict(zip(keys, combo))}
            points.append({"name": _point_name(values), "values": values})
    names = [p["name"] for p in points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ToughenUsageError(f"--grid: points {', '.join(dupes)} would share a run directory; "
                                "give values that differ when printed")
    return points


def run_sweep(
    grid_text: str,
    base: dict[str, Any],
    out: str | Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every point of the grid not yet finished under ``out``; return one row per point (its
    values and test accuracies). ``toughen sweep`` then writes ``out/report.html`` with
    :func:`toughen.report.build_report`."""
    log = log or (lambda message: None)
    grid = parse_grid(grid_text)
    clash = sorted(set(grid) & set(base))
    if clash:
        raise ToughenUsageError(f"{', '.join(clash)} given both in --grid and as an option; give each in one place")
    points = plan(grid, base)
    configs = [TrainConfig.from_dict({**base, **p["values"]}).validate() for p in points]  # all, before any training

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ToughenUsageError(f"--out {out} exists and is not a directory; choose another")
    with RunLock(out):  # one sweep writes a directory at a time; each point's run has its own lock too
        _check_sweep_dir(out, base, points)
        write_json(out / PLAN_FILE, {"grid": grid, "base": base, "points": points})
        rows = [_run_point(out, point, cfg, f"[{i}/{len(points)}]", log, progress, device)
                for i, (point, cfg) in enumerate(zip(points, configs), 1)]
    return rows


def _check_sweep_dir(out: Path, base: dict[str, Any], points: list[dict[str, Any]]) -> None:
    """Refuse an ``out`` that holds something other than this sweep (checked under the lock)."""
    plan_path = out / PLAN_FILE
    if plan_path.is_file():
        try:
            previous = json.loads(plan_path.read_text())
        except ValueError:
            raise ToughenUsageError(f"{plan_path} is corrupted; move it away to start the sweep afresh") from None
        same = isinstance(previous, dict) and \
            {k: previous.get(k) for k in ("base", "points")} == json.loads(json.dumps({"base": base, "points": points}))
        if not same:
            raise ToughenUsageError(f"{out} holds a different sweep (see {plan_path}); resume it with the same "
                                    "--grid and options, or choose another --out")
    elif any(p.name != LOCK_FILE for p in out.iterdir()):
        raise ToughenUsageError(f"--out {out} exists and is not an empty directory nor a sweep; choose another")


def _run_point(out: Path, point: dict[str, Any], cfg, tag: str, log: Callable[[str], None], progress: bool,
               device: str) -> dict[str, Any]:
    """Train one point of the grid unless it finished earlier; its row of the sweep's table."""
    run_dir = out / point["name"]
    summary = _finished_summary(run_dir / "summary.json")
    if summary is not None:
        log(f"{tag} {point['name']}: finished earlier, kept")
        status = "kept"
    else:
        log(f"{tag} {point['name']}: training")
        try:
            summary, status = train(cfg, run_dir, overwrite=True, progress=progress, device=device), "trained"
        except TrainingDiverged as e:
            log(f"{tag} {point['name']}: diverged: {e}")
            summary, status = {}, "diverged"
    return {"run": point["name"], **point["values"], **{k: summary[k] for k in
            ("eps", "clean_accuracy", "robust_accuracy", "robust_attack", "train_seconds") if k in summary},
            "status": status}


def _finished_summary(path: Path) -> dict[str, Any] | None:
    """A finished point's summary; None if it has none, or one that a crash or a hand left
    unreadable (the point is then trained again)."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None
