"""Read run directories into plain records the report can draw.

Everything here reads files that other commands write, and reads them defensively: a run that
is still training has no summary.json, an old run has no audit.json, and newer versions add
fields (``guard_event`` in metrics rows, ``best_epoch`` and ``cost_multiplier`` in the summary,
``suite`` rows in evaluations.jsonl). A section of the report renders only when its data exists.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toughen.errors import ToughenUsageError
from toughen.runs import read_jsonl
from toughen.console import fmt_number
from toughen.run_kinds import kind_of
from toughen.train.recipes import recipe_parameters

SYMBOLS = {"lam": "λ", "beta": "β", "eps": "ε"}
EDITS = "edits"  # the "norm" of a text run measured by a discrete attack: its budget counts edits


def threat_size(eps: float, norm: str) -> str:
    """``ε=0.3`` for a radius, ``k=5`` for a number of text edits."""
    return f"k={fmt_number(eps)}" if norm == EDITS else f"ε={fmt_number(eps)}"


def short_attack(label: str) -> str:
    """``pgd(early_stop=True,loss=ce,restarts=1,steps=100)`` -> ``pgd-100``; options that change
    the attack's strength stay visible (``pgd-100 margin x5``), bookkeeping ones go."""
    name, _, rest = label.partition("(")
    if not rest.endswith(")"):
        return label
    opts = dict(kv.split("=", 1) for kv in rest[:-1].split(",") if "=" in kv)
    text = name + (f"-{opts.pop('steps')}" if "steps" in opts else "")
    loss = opts.pop("loss", "ce")
    if loss != "ce":
        text += f" {loss}"
    if opts.get("restarts", "1") != "1":
        text += f" x{opts['restarts']}"
    for key in ("restarts", "early_stop", "step_size"):
        opts.pop(key, None)
    return text + "".join(f" {k}={v}" for k, v in sorted(opts.items()))


@dataclass
class Result:
    """One robust-accuracy measurement of a run: from training's summary, `toughen eval`, or a suite."""

    kind: str  # "train", "eval" or "suite"
    attack: str
    eps: float
    norm: str
    clean_accuracy: float | None
    robust_accuracy: float
    n: int | None = None
    per_class: dict[str, float] | None = None
    per_attack: list[tuple[str, float]] = field(default_factory=list)
    curve: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class RunRecord:
    name: str
    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None
    evaluations: list[dict[str, Any]]
    audit: dict[str, Any] | None

    # ------------------------------------------------------------------ what the run is
    @property
    def train(self) -> dict[str, Any]:
        return self.config.get("train") or {}

    @property
    def data_info(self) -> dict[str, Any]:
        return self.config.get("data_info") or {}

    @property
    def recipe(self) -> str:
        return str(self.train.get("recipe", "?"))

    @property
    def is_text(self) -> bool:
        return self.config.get("kind") == "text"

    @property
    def discrete_attacks(self) -> frozenset[str]:
        """The attacks whose threat size counts edits, for this run's kind (none for images)."""
        kind = kind_of(self.config)
        return kind.discrete_attacks if kind is not None else frozenset()

    @property
    def _text_discrete(self) -> bool:
        """A text run measured by a discrete attack: its threat size is a number of edits."""
        return self.is_text and self.train.get("eval_attack", "char_obfuscate") in self.discrete_attacks

    @property
    def eps(self) -> float | None:
        """The size of the threat the run was trained and measured at: eps for images (and for
        text runs measured in embedding space), the evaluated edit budget for other text runs."""
        kind = kind_of(self.config)
        if kind is not None:
            return float(kind.threat_size(self.train))
        return self.train.get("eps")

    @property
    def norm(self) -> str:
        return EDITS if self._text_discrete else str(self.train.get("norm", "linf"))

    @property
    def class_names(self) -> list[str]:
        names = self.data_info.get("class_names")
        return [str(c) for c in names] if names else []

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def params(self) -> dict[str, Any]:
        """The recipe's own parameters (lam for mix, beta for trades), as configured."""
        return {p: self.train[p] for p in recipe_parameters(self.recipe) if p in self.train}

    def label(self) -> str:
        """A short label: recipe, its parameters and eps, e.g. ``mix λ=0.5 ε=0.1``."""
        parts = [self.recipe]
        parts += [f"{SYMBOLS.get(k, k)}={fmt_number(v)}" for k, v in self.params().items()]
        if self.eps is not None:
            parts.append(threat_size(self.eps, self.norm))
        return " ".join(parts)

    # ------------------------------------------------------------------ what was measured
    def results(self) -> list[Result]:
        """Every measurement, the latest one kept where the same attack was run again."""
        found: dict[tuple, Result] = {}
        s = self.summary or {}
        # eval_steps = 0 makes training's own test number a clean accuracy, not a robust one.
        if "robust_accuracy" in s and self.train.get("eval_steps", 1) != 0:
            r = Result("train", str(s.get("robust_attack", "pgd")), float(s.get("eps", self.eps or 0)),
                       str(s.get("norm", self.norm)), s.get("clean_accuracy"), float(s["robust_accuracy"]),
                       s.get("n_test"))
            found[(r.kind, r.attack, r.eps, r.norm, r.n)] = r
        for row in self.evaluations:
            r = _result_from_row(row, self.eps, self.norm, self.discrete_attacks)
            if r is not None:
                found.pop((r.kind, r.attack, r.eps, r.norm, r.n), None)  # re-insert: latest last
                found[(r.kind, r.attack, r.eps, r.norm, r.n)] = r
        return list(found.values())

    def certificates(self) -> list[dict[str, Any]]:
        """Every certification recorded (`toughen certify`, `toughen eval --certify`), oldest first:
        method, eps, norm, n, clean and certified accuracy, the attacked accuracy when an attack
        ran on the same examples, and smoothing's curve over L2 radii."""
        found = []
        for row in self.evaluations:
            cert = row.get("certified") if isinstance(row.get("certified"), dict) else row
            certified = _number(cert.get("certified_accuracy"))
            if certified is None or not isinstance(cert.get("method"), str):
                continue
            bracket = row.get("bracket") if isinstance(row.get("bracket"), dict) else {}
            curve = [(float(r), acc) for r, acc in _pairs(cert.get("curve"), ("radius",))
                     if isinstance(r, (int, float))]
            found.append({"method": cert["method"], "eps": _number(cert.get("eps")), "norm": str(cert.get("norm", "")),
                          "n": cert.get("n"), "clean": _number(cert.get("clean_accuracy")), "certified": certified,
                          "attacked": _number(bracket.get("attacked_accuracy")), "sigma": _number(cert.get("sigma")),
                          "curve": curve})
        return found

    def radius(self) -> dict[str, Any] | None:
        """The latest per-example robust radius measurement (`toughen eval --radius`): attack,
        norm, n, clean accuracy, median, the curve [(eps, robust accuracy)] and the histogram."""
        for row in reversed(self.evaluations):
            r = row.get("radius")
            if not isinstance(r, dict):
                continue
            curve = [(float(e), acc) for e, acc in _pairs(r.get("curve"), ("eps",)) if isinstance(e, (int, float))]
            hist = r.get("histogram") if isinstance(r.get("histogram"), dict) else {}
            edges, counts = hist.get("edges"), hist.get("counts")
            if not curve or not isinstance(edges, list) or not isinstance(counts, list) \
                    or len(edges) != len(counts) + 1:
                continue
            return {"attack": str(row.get("attack", "radius")), "norm": str(row.get("norm", self.norm)),
                    "n": row.get("n"), "clean": _number(row.get("clean_accuracy")), "median": _number(r.get("median")),
                    "curve": sorted(curve), "edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
                    "zero": int(hist.get("zero") or 0), "none_found": int(hist.get("none_found") or 0)}
        return None

    def results_at_training_eps(self) -> list[Result]:
        if self.eps is None:
            return []
        return [r for r in self.results() if r.norm == self.norm and math.isclose(r.eps, self.eps, abs_tol=1e-9)]

    def headline(self) -> Result | None:
        """The run's robust accuracy at its training eps: a suite's result if one was run (it is
        the worst case over its attacks), else the lowest of the single attacks run."""
        at = self.results_at_training_eps()
        suites = [r for r in at if r.kind == "suite"]
        if suites:
            return suites[-1]
        return min(at, key=lambda r: r.robust_accuracy) if at else None

    def robustness_lines(self) -> list[tuple[str, list[tuple[float, float]]]]:
        """(attack, [(eps, robust accuracy), ...]) for every attack measured at two or more eps,
        and a suite's own curve, each starting at eps = 0 with the clean accuracy."""
        lines: list[tuple[str, list[tuple[float, float]]]] = []
        suite_curves = [r for r in self.results() if r.kind == "suite" and len(r.curve) >= 2]
        if suite_curves:
            suite = suite_curves[-1]
            points = sorted(suite.curve)
            if suite.clean_accuracy is not None and points[0][0] > 0:
                points.insert(0, (0.0, suite.clean_accuracy))
            lines.append((suite.attack, points))
        by_attack: dict[tuple[str, str], list[Result]] = {}
        for r in self.results():
            if r.kind != "suite":
                by_attack.setdefault((r.attack, r.norm), []).append(r)
        for (attack, norm), rs in by_attack.items():
            if len({r.eps for r in rs}) < 2:
                continue
            points = sorted({r.eps: r.robust_accuracy for r in rs}.items())
            cleans = [r.clean_accuracy for r in rs if r.clean_accuracy is not None]
            if cleans and points[0][0] > 0:
                points.insert(0, (0.0, sum(cleans) / len(cleans)))
            lines.append((attack if norm == self.norm else f"{attack} ({norm})", points))
        return lines

    def per_class(self) -> tuple[str, dict[str, float]] | None:
        """Per-class robust accuracy of the headline measurement, else of the latest one that has it."""
        head = self.headline()
        if head is not None and head.per_class:
            return head.attack, head.per_class
        for r in reversed(self.results()):
            if r.per_class:
                return f"{r.attack} ε={fmt_number(r.eps)}", r.per_class
        return None

    def detector(self) -> dict[str, Any] | None:
        """A text detector's latest evaluation with an operating point or per-family numbers
        (`toughen eval` on a binary text run), else the training summary's per-family numbers:
        ``{"attack", "budget", "operating_point" or None, "per_family" or None, "holdout_family"}``."""
        rows = [*reversed(self.evaluations), self.summary or {}]
        for row in rows:
            op = row.get("operating_point") if isinstance(row.get("operating_point"), dict) else None
            fam = row.get("per_family") if isinstance(row.get("per_family"), dict) else None
            if op is None and fam is None:
                continue
            # numbers from a file: anything else reads as missing
            families = {str(k): {key: _number(v.get(key)) for key in ("n", "clean_accuracy", "robust_accuracy")}
                        for k, v in (fam or {}).items() if isinstance(v, dict)}
            if op is not None:
                op = {**{key: _number(op.get(key)) for key in ("fpr_budget", "roc_auc", "detection_rate", "test_fpr",
                                                                "evasion_rate_at_threshold", "n_detected")},
                      "positive_class": str(op.get("positive_class", "positive"))}
            attack = row.get("attack") or str(row.get("robust_attack", "?")).split("@")[0]
            return {"attack": str(attack), "budget": row.get("budget"), "operating_point": op,
                    "per_family": families or None, "holdout_family": row.get("holdout_family")}
        return None

    def guard_events(self) -> list[tuple[int, str]]:
        events = []
        for row in self.metrics:
            ev = row.get("guard_event")
            if ev:
                events.append((int(row.get("epoch", len(events) + 1)), _describe(ev)))
        return events

    def best_epoch(self) -> int | None:
        best = (self.summary or {}).get("best_epoch")
        return int(best) if isinstance(best, (int, float)) and not isinstance(best, bool) else None


# ---------------------------------------------------------------------------- reading

def _describe(event: Any) -> str:
    if isinstance(event, str):
        return event
    if isinstance(event, dict):
        return "; ".join(f"{k}: {fmt_number(v)}" for k, v in event.items())
    if isinstance(event, list):
        return "; ".join(_describe(e) for e in event)
    return str(event)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        for key in ("robust_accuracy", "certified_accuracy", "accuracy", "value"):
            if key in value:
                return _number(value[key])
    return None


def _pairs(obj: Any, key_names: tuple[str, ...]) -> list[tuple[Any, float]]:
    """Read ``{k: acc}``, ``[{name: k, robust_accuracy: acc}]`` or ``[[k, acc]]`` into pairs."""
    pairs: list[tuple[Any, float]] = []
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = []
        for entry in obj:
            if isinstance(entry, dict):
                key = next((entry[k] for k in key_names if k in entry), None)
                items.append((key, entry))
            elif isinstance(entry, (list, tuple)) and len(entry) == 2:
                items.append((entry[0], entry[1]))
    else:
        return pairs
    for key, value in items:
        acc = _number(value)
        if key is not None and acc is not None:
            pairs.append((key, acc))
    return pairs


def _result_from_row(row: dict[str, Any], eps: float | None, norm: str,
                     discrete_attacks: frozenset[str]) -> Result | None:
    if "suite" in row:
        curve = []
        for k, acc in _pairs(row.get("curve"), ("eps",)):
            try:
                curve.append((float(k), acc))
            except (TypeError, ValueError):
                continue
        robust = _number(row.get("robust_accuracy"))
        per_attack = [(str(k), acc) for k, acc in _pairs(row.get("per_attack"), ("attack", "name"))]
        if robust is None and per_attack:
            robust = min(acc for _, acc in per_attack)  # an upper bound on the per-example worst case
        if robust is None:
            return None
        # `toughen eval --eps-sweep` without --suite records a one-attack "custom" suite
        label = f"suite {row['suite']}" if row["suite"] != "custom" else short_attack(str(row.get("attack", "custom")))
        return Result("suite", label, float(row.get("eps", eps or 0)), str(row.get("norm", norm)),
                      _number(row.get("clean_accuracy")), robust, row.get("n"), _per_class(row), per_attack, curve)
    robust = _number(row.get("robust_accuracy"))
    if robust is None:
        return None
    if "eps" in row:
        size, row_norm = float(row["eps"]), str(row.get("norm", norm))
    elif "budget" in row:  # a text attack: edits for the discrete ones, a radius for embed_pgd
        discrete = str(row.get("attack")) in discrete_attacks
        size, row_norm = float(row["budget"]), EDITS if discrete else str(row.get("norm", "l2"))
    else:
        return None
    return Result("eval", short_attack(str(row.get("attack", "?"))), size, row_norm,
                  _number(row.get("clean_accuracy")), robust, row.get("n"), _per_class(row))


def _per_class(row: dict[str, Any]) -> dict[str, float] | None:
    pc = row.get("per_class_robust_accuracy")
    if not isinstance(pc, dict):
        return None
    return {str(k): v for k, acc in pc.items() if (v := _number(acc)) is not None} or None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # being written by another process; the report shows the run as unfinished
    return obj if isinstance(obj, dict) else None


def load_run(path: str | Path, name: str | None = None) -> RunRecord:
    path = Path(path)
    cfg_path = path / "config.yaml"
    if not cfg_path.is_file():
        raise ToughenUsageError(f"{path} is not a toughen run directory (no config.yaml)")
    config = yaml.safe_load(cfg_path.read_text()) or {}
    metrics = read_jsonl(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    evals = read_jsonl(path / "evaluations.jsonl") if (path / "evaluations.jsonl").is_file() else []
    return RunRecord(
        name=name or path.name, path=path, config=config, metrics=metrics,
        summary=_read_json(path / "summary.json"), evaluations=evals, audit=_read_json(path / "audit.json"),
    )


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories, with a sweep directory (one holding sweep.json) replaced by its runs."""
    dirs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ToughenUsageError(f"{p} is not a directory")
        if (p / "config.yaml").is_file():
            dirs.append(p)
        elif (p / "sweep.json").is_file():
            plan = json.loads((p / "sweep.json").read_text())
            dirs += [p / pt["name"] for pt in plan.get("points", []) if (p / pt["name"] / "config.yaml").is_file()]
        else:
            raise ToughenUsageError(f"{p} is neither a run directory (no config.yaml) nor a sweep (no sweep.json)")
    return dirs


def collect(paths: list[str | Path]) -> list[RunRecord]:
    """Load every run; runs whose directory names clash are named by parent/name."""
    dirs = expand_run_dirs(paths)
    if not dirs:
        raise ToughenUsageError("no runs to report: the sweep has no run with a config.yaml yet")
    resolved = [d.resolve() for d in dirs]
    if len(set(resolved)) != len(resolved):
        raise ToughenUsageError("the same run directory was given twice")
    names = [d.name for d in dirs]
    runs = []
    for d in dirs:
        name = d.name if names.count(d.name) == 1 else f"{d.resolve().parent.name}/{d.name}"
        runs.append(load_run(d, name))
    return runs
