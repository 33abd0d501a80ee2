"""The HTML robustness report: one self-contained page over one or more run directories.

    from toughen.report import build_report
    build_report(["runs/standard", "runs/pgd"], "report.html")

or ``toughen report runs/standard runs/pgd --out report.html``. See docs/report.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from toughen._version import __version__
from toughen.report.collect import (EDITS, SYMBOLS, RunRecord, collect, fmt_number, load_run, recipe_parameters,
                                    threat_size)
from toughen.errors import ToughenUsageError
from toughen.runs import atomic_write_text

NORM_NAMES = {"linf": "L∞", "l2": "L2", EDITS: "edits"}


def _pct(v: float | None) -> str:
    return "—" if v is None or v != v else f"{100 * v:.1f}%"  # v != v: NaN, nothing to measure


def _seconds(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _summary_row(run: RunRecord) -> dict[str, Any]:
    s = run.summary or {}
    head = run.headline()
    # a suite's per-attack numbers are cumulative: robust accuracy left after each attack in order
    others = [f"after {name}: {_pct(acc)}" for name, acc in (head.per_attack if head else [])]
    others += [f"{r.attack}{' (end of training)' if r.kind == 'train' else ''}: {_pct(r.robust_accuracy)} (n={r.n})"
               for r in run.results_at_training_eps() if r != head]
    warned = _warnings(run)
    if warned:
        others.append(f"warnings of attack failure: {sum(len(e['warnings']) for e in warned['evaluations'])} "
                      "(see below)")
    cost = s.get("cost_multiplier")
    verdict = str(run.audit.get("verdict", "?")) if run.audit else None
    return {
        "verdict": verdict,
        "verdict_class": _css_word(verdict or ""),
        "name": run.name,
        "finished": run.finished,
        "recipe": run.recipe,
        "params": [(SYMBOLS.get(k, k), fmt_number(v)) for k, v in run.params().items()],
        "data": run.train.get("data", "?"),
        "model": run.train.get("model", "?"),
        "threat": f"at most {fmt_number(run.eps)} edits" if run.norm == EDITS
        else f"ε = {fmt_number(run.eps)} ({NORM_NAMES.get(run.norm, run.norm)})",
        # an unfinished run shows how far it got: "3/10"
        "epochs": run.train.get("epochs", "?") if run.finished else f"{len(run.metrics)}/{run.train.get('epochs', '?')}",
        "best_epoch": run.best_epoch(),
        "clean": _pct(head.clean_accuracy if head and head.clean_accuracy is not None else s.get("clean_accuracy")),
        "robust": _pct(head.robust_accuracy) if head else None,
        "robust_attack": f"{head.attack}{' (end of training)' if head.kind == 'train' else ''}, n={head.n}"
        if head else "",
        "others": others,
        "train_time": _seconds(s.get("train_seconds")),
        "cost": f"×{cost:.2g}" if isinstance(cost, (int, float)) else "—",
    }


def _audit(run: RunRecord) -> dict[str, Any] | None:
    a = run.audit
    if not a:
        return None
    import json

    checks = []
    for c in a.get("checks") or []:
        if not isinstance(c, dict):
            continue
        ev = c.get("evidence", "")
        status = str(c.get("status", "?"))
        checks.append({"name": str(c.get("name", "?")), "status": status, "status_class": _css_word(status),
                       "evidence": ev if isinstance(ev, str) else json.dumps(ev, default=str)})
    verdict = str(a.get("verdict", "?"))
    return {"name": run.name, "verdict": verdict, "verdict_class": _css_word(verdict), "checks": checks}


def _warnings(run: RunRecord) -> dict[str, Any] | None:
    """The warnings of the indicators of attack failure that the run's evaluations recorded (a
    suite's own, and those at each eps of its curve), with their evidence, oldest first."""
    found = []
    for row in run.evaluations:
        label = f"{row.get('attack', '?')} at ε = {fmt_number(row.get('eps'))}, n = {row.get('n', '?')}"
        groups = [(label, row.get("warnings"))]
        groups += [(f"{label}, curve at ε = {fmt_number(c.get('eps'))}", c.get("warnings"))
                   for c in row.get("curve") or [] if isinstance(c, dict)]
        for text, warnings in groups:
            shown = [{"indicator": str(w.get("indicator", "?")), "attack": str(w.get("attack", "?")),
                      "evidence": str(w.get("evidence", ""))}
                     for w in warnings or [] if isinstance(w, dict)]
            if shown:
                found.append({"evaluation": f"{text} ({row['time']})" if "time" in row else text, "warnings": shown})
    return {"name": run.name, "evaluations": found} if found else None


def _css_word(text: str) -> str:
    # A class name built from data: only letters and hyphens survive (autoescape covers quotes anyway).
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower())[:30]


def _per_class(runs: list[RunRecord]) -> dict[str, Any] | None:
    found = [(run, pc) for run in runs if (pc := run.per_class())]
    if not found:
        return None
    classes: list[str] = []
    for run, (_, table) in found:
        order = run.class_names or list(table)
        classes += [c for c in order if c in table and c not in classes]
        classes += [c for c in table if c not in classes]
    rows = []
    for c in classes:
        cells = []
        for _, (_, table) in found:
            v = table.get(c)
            # white (0%) to green (100%): the weak classes stand out without reading numbers
            color = "transparent" if v is None else f"hsl(150, 55%, {97 - 30 * v:.0f}%)"
            cells.append({"text": _pct(v), "color": color})
        rows.append({"name": c, "cells": cells})
    headers = [{"name": run.name, "attack": attack} for run, (attack, _) in found]
    return {"headers": headers, "rows": rows}


def _detector(run: RunRecord) -> dict[str, Any] | None:
    """A text detector's operating point and per-family rates, as table cells."""
    d = run.detector()
    if d is None:
        return None
    op = d["operating_point"] or {}
    families = [{"name": name + (" (held out)" if name == d["holdout_family"] else ""),
                 "n": "?" if r["n"] is None else int(r["n"]), "clean": _pct(r["clean_accuracy"]),
                 "robust": _pct(r["robust_accuracy"])} for name, r in (d["per_family"] or {}).items()]
    auc, detected = op.get("roc_auc"), op.get("n_detected")
    return {
        "name": run.name, "attack": d["attack"], "budget": d["budget"], "has_op": bool(op),
        "fpr": _pct(op.get("fpr_budget")), "auc": "—" if auc is None else f"{auc:.3f}",
        "detection": _pct(op.get("detection_rate")), "test_fpr": _pct(op.get("test_fpr")),
        "evasion": _pct(op.get("evasion_rate_at_threshold")), "n_detected": "—" if detected is None else int(detected),
        "positive": op.get("positive_class", "positive"), "families": families,
    }


def build_report(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    gallery: bool = True,
    gallery_n: int = 10,
    gallery_steps: int = 20,
    device: str = "cpu",
    title: str | None = None,
) -> Path:
    """Write the report of ``run_dirs`` (run directories, or sweep directories, which stand for
    their runs) to the HTML file ``out``; return its path."""
    from toughen.report import plots
    from toughen.report.html import render

    runs = collect(list(run_dirs))
    out = Path(out)

    points = []
    for run in runs:
        head = run.headline()
        if head is not None and head.clean_accuracy is not None:
            points.append({"label": run.label(), "recipe": run.recipe, "clean": head.clean_accuracy,
                           "robust": head.robust_accuracy,
                           "group": f"{threat_size(head.eps, head.norm)} {NORM_NAMES.get(head.norm, head.norm)}"})
    tradeoff = plots.tradeoff(points) if len(points) >= 2 else None

    lines = [(run.name, attack, pts) for run in runs for attack, pts in run.robustness_lines()]
    robustness = plots.robustness_curves(lines) if lines else None

    curves = []
    for run in runs:
        if run.metrics:
            events = run.guard_events()
            curves.append({
                "name": run.name, "label": run.label(), "events": events,
                "img": plots.training_curves(run.metrics, best_epoch=run.best_epoch(),
                                             guard_epochs=[e for e, _ in events]),
            })

    galleries = []
    if gallery:  # image galleries attack the test images; a text run's examples come from its summary
        galleries = _galleries([run for run in runs if not run.is_text], gallery_n, gallery_steps, device)
    text_examples = [t for run in runs if run.is_text and (t := _text_examples(run, gallery_n))]

    bracket_rows, radius_lines = _certificates(runs)
    robust_radii = [r for run in runs if (r := _robust_radius(run))]
    audits = [a for run in runs if (a := _audit(run))]
    attack_warnings = [w for run in runs if (w := _warnings(run))]
    summary_rows = [_summary_row(run) for run in runs]
    context = {
        "title": title or ("toughen report: " + (runs[0].name if len(runs) == 1 else f"{len(runs)} runs")),
        "subtitle": f"made {time.strftime('%Y-%m-%d %H:%M')} by toughen {__version__}",
        "summary_rows": summary_rows,
        "any_missing_robust": any(r["robust"] is None for r in summary_rows),
        "show_cost": any(r["cost"] != "—" for r in summary_rows),
        "audits": audits,
        "attack_warnings": attack_warnings,
        "tradeoff": tradeoff,
        "robustness": robustness,
        "robustness_hint": any(run.results() for run in runs),
        "brackets": plots.brackets(bracket_rows) if bracket_rows else None,
        "bracket_rows": bracket_rows,
        "radius_curves": plots.certified_radius_curves(radius_lines) if radius_lines else None,
        "robust_radii": robust_radii,
        "curves": curves,
        "per_class": _per_class(runs),
        "detectors": [d for run in runs if run.is_text and (d := _detector(run))],
        "galleries": galleries,
        "text_examples": text_examples,
        "sources": ", ".join(str(run.path) for run in runs),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render(context))
    os.chmod(out, 0o644)  # a page to share: the temporary file it was written as was private
    return out


def _certificates(runs: list[RunRecord]) -> tuple[list[dict[str, Any]], list[tuple[str, list]]]:
    """Per run, its latest deterministic certification with the attack beside it (the one run with
    it, else the run's strongest measurement at the same threat), and smoothing's radius curves."""
    rows, lines = [], []
    for run in runs:
        certs = run.certificates()
        bound = [c for c in certs if c["method"] != "smoothing"]
        if bound:
            c = bound[-1]
            attacked, clean = c["attacked"], c["clean"]
            if attacked is None:
                same = [r for r in run.results() if c["eps"] is not None and r.norm == c["norm"]
                        and abs(r.eps - c["eps"]) < 1e-9]
                attacked = min((r.robust_accuracy for r in same), default=None)
            threat = f"{threat_size(c['eps'], c['norm'])} {NORM_NAMES.get(c['norm'], c['norm'])}"
            rows.append({"label": f"{run.name} ({c['method']}, {threat})", "certified": c["certified"],
                         "attacked": attacked, "clean": clean, "method": c["method"], "n": c["n"],
                         "text": f"{_pct(c['certified'])} to {_pct(attacked)}" if attacked is not None
                         else f"at least {_pct(c['certified'])}"})
        smooth = [c for c in certs if c["method"] == "smoothing" and c["curve"]]
        if smooth:
            lines.append((f"{run.name} (σ = {fmt_number(smooth[-1]['sigma'])})", smooth[-1]["curve"]))
    return rows, lines


def _robust_radius(run: RunRecord) -> dict[str, Any] | None:
    """The run's latest robust-radius row drawn (histogram and curve), with the run's per-eps attack
    measurements in the same norm as markers on the curve."""
    from toughen.report import plots

    r = run.radius()
    if r is None:
        return None
    measured: dict[str, list[tuple[float, float]]] = {}
    for res in run.results():
        if res.norm != r["norm"] or res.attack.startswith("radius"):
            continue
        label = res.attack + (" (end of training)" if res.kind == "train" else "")
        points = measured.setdefault(label + (f", n={res.n}" if res.n != r["n"] else ""), [])
        points += res.curve if res.curve else [(res.eps, res.robust_accuracy)]
    norm = NORM_NAMES.get(r["norm"], r["norm"])
    median = "none found for half the examples" if r["median"] is None else fmt_number(r["median"])
    return {"name": run.name, "label": run.label(), "attack": r["attack"], "n": r["n"], "norm": norm,
            "median": median, "img": plots.robust_radius(r["edges"], r["counts"], r["curve"], norm=norm, zero=r["zero"],
                                                         none_found=r["none_found"],
                                                         measured=[(k, sorted(set(v))) for k, v in measured.items()])}


def _text_examples(run: RunRecord, n: int) -> dict[str, Any] | None:
    """The adversarial texts training's test evaluation kept (successful evasions first)."""
    examples = [e for e in (run.summary or {}).get("examples") or [] if isinstance(e, dict)][:n]
    if not examples:
        return None
    return {
        "name": run.name, "label": run.label(), "attack": str((run.summary or {}).get("robust_attack", "?")),
        "examples": [{"original": str(e.get("original", "")), "adversarial": str(e.get("adversarial", "")),
                      "label": str(e.get("label", "?")), "now": str(e.get("adversarial_prediction", "?")),
                      "edits": e.get("edits", "?"), "success": bool(e.get("success"))} for e in examples],
    }


def _galleries(runs: list[RunRecord], n: int, steps: int, device: str) -> list[dict[str, Any]]:
    from toughen.data import load_data
    from toughen.report.gallery import make_gallery

    cache: dict[tuple, Any] = {}  # runs of a sweep share their data: load it once
    galleries = []
    for run in runs:
        key = (run.train.get("data"), run.train.get("data_dir"), run.train.get("val_size"))
        options = run.train.get("data_options") or {}
        key += tuple(sorted(options.items()))
        try:
            if key not in cache:
                cache[key] = load_data(*key[:3], options=options)
        except (ToughenUsageError, FileNotFoundError) as e:  # e.g. a data_dir from another machine
            galleries.append({"ok": False, "reason": f"the test data could not be loaded ({e})",
                              "name": run.name, "label": run.label()})
            continue
        g = make_gallery(run, cache[key], n=n, steps=steps, device=device)
        g.update(name=run.name, label=run.label())
        if g["ok"]:
            g["eps"] = fmt_number(g["eps"])
            g["scale"] = fmt_number(g["scale"])
            g["n_fooled"] = sum(ex["fooled"] for ex in g["examples"])
            g["n_clean_right"] = sum(ex["clean_right"] for ex in g["examples"])
            for ex in g["examples"]:
                ex["clean_conf"] = f"{100 * ex['clean_conf']:.0f}%"
                ex["adv_conf"] = f"{100 * ex['adv_conf']:.0f}%"
        galleries.append(g)
    return galleries


__all__ = ["RunRecord", "build_report", "collect", "load_run", "recipe_parameters"]
