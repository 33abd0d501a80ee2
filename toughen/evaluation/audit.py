"""Sanity checks that expose gradient masking and obfuscated gradients.

A model can look robust only because gradient attacks cannot see: its gradients are zero,
shattered (quantized or non-differentiable inputs), saturated (a softmax pushed to exactly 0 and
1), or random. Athalye, Carlini and Wagner (2018, "Obfuscated Gradients Give a False Sense of
Security") and Carlini et al. (2019, "On Evaluating Adversarial Robustness") list the symptoms;
AutoAttack's ``checks.py`` prints some of them. Each check here reports ``pass`` or
``suspicious`` with its evidence (``skipped`` when it needs something not given), and the audit's
verdict is ``suspicious`` if any check is.

Six of the checks are the indicators of attack failure of Pintor et al. (2022, "Indicators of
Attack Failure: Debugging and Improving Optimization of Adversarial Examples", NeurIPS), and say so
in their ``indicator`` field: ``deterministic`` (unstable predictions), ``gradients_finite_nonzero``
(unavailable gradients), ``unbounded_attack_succeeds`` (unconstrained attack failure),
``silent_success``, ``incomplete_optimization`` and ``transfer_failure`` (with a surrogate). The
cheap ones also run on every suite evaluation (:mod:`toughen.evaluation.indicators`).

    report = audit(model, x, y, eps=0.3)
    report["verdict"], [c["name"] for c in report["checks"] if c["status"] != "pass"]
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from toughen import threat
from toughen.attacks import Attack
from toughen.errors import ToughenUsageError, check_number
from toughen.evaluation import indicators as ind
from toughen.evaluation.active_test import binarization_test, default_attacks
from toughen.evaluation.cascade import model_device
from toughen.evaluation.suite import evaluate
from toughen.logits import logits_of
from toughen.run_kinds import kind_of
from toughen.runtime import check_device

PASS, SUSPICIOUS, SKIPPED = "pass", "suspicious", "skipped"
# The checks that are indicators of attack failure (Pintor et al. 2022), and the paper's names.
INDICATOR_OF = {"deterministic": "unstable_predictions", "gradients_finite_nonzero": "unavailable_gradients",
                "unbounded_attack_succeeds": "unconstrained_attack_failure", "silent_success": "silent_success",
                "incomplete_optimization": "incomplete_optimization", "transfer_failure": "transfer_failure"}


def make_check(name: str, ok: bool, evidence: str, **values: Any) -> dict[str, Any]:
    indicator = {"indicator": INDICATOR_OF[name]} if name in INDICATOR_OF else {}
    return {"name": name, "status": PASS if ok else SUSPICIOUS, "evidence": evidence, **indicator, **values}


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def output_checks(out1: torch.Tensor, out2: torch.Tensor) -> list[dict[str, Any]]:
    """The checks on two forward passes of the same inputs: deterministic, and logits rather
    than probabilities (probabilities flatten the cross-entropy's gradient)."""
    spread = (out1 - out2).abs().max().item()
    scale = out1.abs().max().item() + 1e-12
    randomized = spread > 1e-5 * max(scale, 1.0)
    rows_sum = out1.float().sum(1)
    probabilities = bool((out1 >= 0).all() and (rows_sum - 1).abs().max() < 1e-3)
    return [
        make_check(
            "deterministic", not randomized,
            f"two forward passes on the same inputs differ by up to {spread:.3g}"
            + (": the model is randomized; its robustness must be measured with expectation over "
               "transformation (average the gradient over many draws), not with plain attacks: the rand suite "
               "(toughen eval --suite rand)" if randomized
               else " (identical)"),
            max_difference=spread,
        ),
        make_check(
            "outputs_are_logits", not probabilities,
            "every output row is non-negative and sums to 1: the model returns probabilities, which flattens the "
            "gradient of cross-entropy; attack the logits" if probabilities else
            f"outputs are unnormalized (row sums from {rows_sum.min().item():.3g} to {rows_sum.max().item():.3g})",
        ),
    ]


def deterministic_check(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The audit's ``deterministic`` check alone: two forward passes of ``x`` (a small batch is
    enough), ``status`` "suspicious" when they differ (a randomized model). `toughen eval --suite
    standard` runs it to switch a randomized model to the ``rand`` suite."""
    with torch.no_grad():
        return output_checks(logits_of(model, x), logits_of(model, x))[0]


def verdict_of(checks: list[dict[str, Any]]) -> str:
    return SUSPICIOUS if any(c["status"] == SUSPICIOUS for c in checks) else PASS


def _evaluate(model, x, y, attacks, eps, norm, bounds, seed, indicators=False) -> dict[str, Any]:
    return evaluate(model, x, y, suite=attacks, eps=eps, norm=norm, bounds=bounds, seed=seed, batch_size=len(x),
                    indicators=indicators)


def _robust(model, x, y, attacks, eps, norm, bounds, seed) -> torch.Tensor:
    return _evaluate(model, x, y, attacks, eps, norm, bounds, seed)["robust"]


def audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    bounds: threat.Bounds = (0.0, 1.0),
    steps: int = 20,
    n_queries: int = 1000,
    seed: int = 0,
    tolerance: float = 0.01,
    surrogate: nn.Module | None = None,
) -> dict[str, Any]:
    """Run the gradient-masking checks on ``model`` at radius ``eps``.

    Args:
        model: maps inputs in ``bounds`` to logits, in eval mode.
        x, y: the examples (a few hundred are enough), on any device.
        steps: PGD steps of the baseline white-box attack; the "more iterations" check uses 3x,
            with 2 restarts.
        n_queries: Square's query budget for the black-box check.
        tolerance: accuracy differences up to this fraction (plus one example) count as noise.
        surrogate: a model trained on the same data (standard training is best), on the model's
            device, for the ``transfer_failure`` check (skipped without it).

    Returns:
        ``{"verdict": "pass" | "suspicious", "checks": [{"name", "status", "evidence", ...}],
        "robust_accuracy": {attack: accuracy}, "eps", "norm", "n", "seconds"}``.
    """
    threat.check_eps(eps, norm, bounds)
    if eps == 0:
        raise ToughenUsageError("the audit needs eps > 0")
    if len(x) != len(y) or len(x) == 0:
        raise ToughenUsageError(f"x and y must be non-empty and of the same length, got {len(x)} and {len(y)}")
    check_number("steps (--steps)", steps, low=1, whole=True)
    check_number("n_queries (--queries)", n_queries, low=1, whole=True)
    start = time.perf_counter()
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    if surrogate is not None:
        ind.check_surrogate(surrogate, model, x)
    n = len(x)
    tol = tolerance + 1.0 / n
    lo, hi = bounds
    checks = []

    # -- outputs: deterministic, logits -------------------------------------------------------
    with torch.no_grad():
        checks += output_checks(logits_of(model, x), logits_of(model, x))

    # -- gradients: finite, non-zero, softmax not saturated ----------------------------------------
    gen = torch.Generator(device=device).manual_seed(seed)
    points = torch.cat([x, (x + threat.random_start(x, eps, norm, bounds, gen)).clamp(lo, hi)])
    labels = torch.cat([y, y])
    xg = points.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_of(model, xg)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), labels, reduction="sum"), xg)
    flat = grad.flatten(1)
    nonfinite = (~torch.isfinite(flat)).any(1).float().mean().item()
    zero = (flat == 0).all(1).float().mean().item()
    saturated = (logits.detach().float().softmax(1).amax(1) == 1.0).float().mean().item()
    checks.append(make_check(
        "gradients_finite_nonzero", nonfinite == 0 and zero <= tolerance,
        f"input gradient of the cross-entropy at the clean points and at random points in the ball: "
        f"{pct(zero)} exactly zero, {pct(nonfinite)} not finite; softmax saturated to exactly 1 on "
        f"{pct(saturated)}", zero_fraction=zero, nonfinite_fraction=nonfinite, saturated_fraction=saturated,
    ))

    # -- attacks that must be ordered ------------------------------------------------------------------
    with torch.no_grad():
        clean = (logits_of(model, x).argmax(1) == y).float().mean().item()
    traced = ("silent_success", "incomplete_optimization")  # read from the PGD runs' per-step traces
    fgsm_r = _robust(model, x, y, [Attack("fgsm")], eps, norm, bounds, seed)
    pgd_e = _evaluate(model, x, y, [Attack("pgd", {"steps": steps, "early_stop": True})], eps, norm, bounds, seed,
                      traced)
    strong = Attack("pgd", {"steps": 3 * steps, "restarts": 2, "early_stop": True})
    strong_e = _evaluate(model, x, y, [strong], eps, norm, bounds, seed + 1, traced)
    pgd_r, strong_r = pgd_e["robust"], strong_e["robust"]
    acc = {"clean": clean, "fgsm": fgsm_r.float().mean().item(), f"pgd-{steps}": pgd_r.float().mean().item(),
           f"pgd-{3 * steps}x2": strong_r.float().mean().item()}
    a_fgsm, a_pgd, a_strong = acc["fgsm"], acc[f"pgd-{steps}"], acc[f"pgd-{3 * steps}x2"]
    checks.append(make_check(
        "single_step_not_stronger", a_fgsm >= a_pgd - tol,
        f"FGSM leaves {pct(a_fgsm)} robust, PGD-{steps} {pct(a_pgd)}"
        + ("; a single step beating an iterative attack means the loss surface misleads the iterations"
           if a_fgsm < a_pgd - tol else ""),
    ))
    checks.append(make_check(
        "more_iterations_not_weaker", a_strong <= a_pgd + tol,
        f"PGD-{steps} leaves {pct(a_pgd)} robust, PGD-{3 * steps} with 2 restarts {pct(a_strong)}"
        + ("; more iterations should never help the model" if a_strong > a_pgd + tol else ""),
    ))

    # -- an unbounded attack must reach (about) zero ------------------------------------------
    width = hi - lo
    big = 0.99 * width if norm == "linf" else 0.5 * width * math.sqrt(x[0].numel())
    unb = _robust(model, x, y, [Attack("pgd", {"steps": 50, "loss": "margin", "early_stop": True})], big, norm, bounds,
                  seed).float().mean().item()
    acc[f"pgd-50 at eps {big:.3g}"] = unb
    checks.append(make_check(
        "unbounded_attack_succeeds", unb <= 0.02,
        f"PGD-50 with eps = {big:.3g} (nearly the whole input range) leaves {pct(unb)} robust"
        + ("; it should reach about 0%: the gradients do not lead anywhere" if unb > 0.02 else ""),
    ))

    # -- the black-box attack must not beat the white-box ones ------------------------------
    # The white-box side includes a margin-loss PGD: a gap that only cross-entropy leaves open is a
    # weak loss, caught by the gradient check, not yet a sign that gradients hide examples.
    margin_e = _evaluate(model, x, y, [Attack("pgd", {"steps": steps, "loss": "margin", "early_stop": True})], eps,
                         norm, bounds, seed, traced)
    margin_r = margin_e["robust"]
    acc[f"pgd-{steps}-margin"] = margin_r.float().mean().item()
    white = fgsm_r & pgd_r & strong_r & margin_r
    idx = white.nonzero().squeeze(1)
    extra = 0
    if len(idx):
        sq = _robust(model, x[idx], y[idx], [Attack("square", {"n_queries": n_queries})], eps, norm, bounds, seed)
        extra = int((~sq).sum().item())
    acc[f"square-{n_queries} after white-box"] = (white.sum().item() - extra) / n
    checks.append(make_check(
        "black_box_not_stronger", extra / n <= tol,
        f"Square ({n_queries} queries, no gradients) fooled {extra} of the {len(idx)} examples the white-box "
        f"attacks left robust ({pct(extra / n)} of all)"
        + ("; gradients are hiding adversarial examples" if extra / n > tol else ""),
        extra_fooled=extra,
    ))

    # -- the attacks' own optimization: no lost adversarial example, a loss that has settled ----
    rows = [e["indicators"]["attacks"][0] for e in (pgd_e, strong_e, margin_e)]
    names = ", ".join(r["attack"] for r in rows)
    silent = sum(r["silent"] for r in rows)
    checks.append(make_check(
        "silent_success", silent == 0,
        f"{names}: {silent} examples fooled by an iterate at some step but not by the returned point"
        + ("; the attack lost adversarial examples it had found" if silent else ""),
        silent=silent,
    ))
    last = rows[1]  # the strong PGD: the one whose budget should suffice
    checks.append(make_check(
        "incomplete_optimization", not ind.still_rising(last),
        f"{last['rising']} of the {last['measured']} examples {last['attack']} left robust were still gaining loss "
        f"when its steps ran out (more than {ind.RISE:.0%} of the loss's rise in the last {ind.TAIL:.0%} of the steps)"
        + ("; more steps or a larger step size may fool some of them" if ind.still_rising(last) else ""),
        rising=last["rising"], measured=last["measured"],
    ))

    # -- a transfer attack must not beat the white-box ones ------------------------------------
    if surrogate is None:
        checks.append({"name": "transfer_failure", "status": SKIPPED, "indicator": INDICATOR_OF["transfer_failure"],
                       "evidence": "no surrogate given: pass --surrogate RUN (a standard-trained run on the same data) "
                                   "to check whether its transferred points fool examples the white-box attacks miss"})
    else:
        moved = 0
        if len(idx):
            moved = int(ind.transfer_fooled(model, surrogate, x[idx], y[idx], eps=eps, norm=norm, bounds=bounds,
                                            seed=seed).sum())
        acc[f"transfer-pgd-{ind.TRANSFER_STEPS} after white-box"] = (white.sum().item() - moved) / n
        checks.append(make_check(
            "transfer_failure", moved / n <= tol,
            f"PGD-{ind.TRANSFER_STEPS} on the surrogate, transferred, fooled {moved} of the {len(idx)} examples the "
            f"white-box attacks left robust ({pct(moved / n)} of all)"
            + ("; the white-box attacks miss adversarial examples that exist" if moved / n > tol else ""),
            extra_fooled=moved,
        ))

    # -- robust accuracy must fall with eps ---------------------------------------------------
    eps_values = [eps / 2, eps, min(2 * eps, 0.99 * width if norm == "linf" else 2 * eps)]
    curve = []
    for e in eps_values:
        r = pgd_r if e == eps else _robust(model, x, y, [Attack("pgd", {"steps": steps, "early_stop": True})], e, norm,
                                           bounds, seed)
        curve.append({"eps": e, "robust_accuracy": r.float().mean().item()})
    rises = [(a, b) for a, b in zip(curve, curve[1:]) if b["robust_accuracy"] > a["robust_accuracy"] + tol]
    checks.append(make_check(
        "accuracy_falls_with_eps", not rises,
        "PGD-%d robust accuracy at eps %s: %s" % (
            steps, ", ".join(f"{c['eps']:.3g}" for c in curve), ", ".join(pct(c["robust_accuracy"]) for c in curve))
        + ("; it rises with eps" if rises else ""),
        curve=curve,
    ))

    return {"verdict": verdict_of(checks), "checks": checks, "robust_accuracy": acc, "eps": eps, "norm": norm, "n": n,
            "seconds": time.perf_counter() - start}


__all__ = ["audit", "deterministic_check", "output_checks"]


# ----------------------------------------------------------------------------- loading what to audit

def load_factory_model(spec: str, weights: str | None, data_name: str, data_dir: str | None) -> nn.Module:
    """A model for `toughen audit --model`: ``MODULE:FUNCTION`` (a factory imported from the current
    directory or PYTHONPATH, returning an ``nn.Module`` that takes inputs in the data bounds), or
    a registered model name with a safetensors ``weights`` file (loaded without executing code)."""
    from pathlib import Path

    from toughen.data import load_data
    from toughen.models import MODELS, build_model
    from toughen.models.backbone import factory_model
    from toughen.runs import load_weights

    if ":" in spec:
        model = factory_model(spec)
        if weights is not None:
            load_weights(model, Path(weights))
        return model.eval()
    if spec not in MODELS:
        raise ToughenUsageError(f"--model {spec!r} is neither MODULE:FUNCTION nor a registered model "
                                f"({', '.join(MODELS.names())})")
    if weights is None or not Path(weights).is_file():
        raise ToughenUsageError(f"a registered model needs its weights: --weights FILE.safetensors (got {weights})")
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        keys = list(f.keys())
    splits = load_data(data_name, data_dir)
    # A model built with toughen's normalization layer saves its mean and std as "0.mean"/"0.std".
    normalized = "0.mean" in keys
    model = build_model(spec, splits.input_shape, splits.num_classes,
                        mean=splits.mean if normalized else None, std=splits.std if normalized else None)
    load_weights(model, Path(weights))
    return model.eval()


def audit_command(run_dir, *, model_spec, weights, data, data_dir, eps, norm, n, n_queries, steps, seed, device,
                  active_n=None, surrogate=None):
    """What `toughen audit` runs: returns the report, and writes RUN_DIR/audit.json for a run.
    ``active_n`` (a number) adds the binarization test of the default attacks on the first ``active_n``
    test examples, under the key "active_test" (:mod:`toughen.evaluation.active_test`). ``surrogate``
    (a run directory) is the transfer attack's surrogate of the ``transfer_failure`` check."""
    from pathlib import Path

    from toughen.data import load_data
    from toughen.runs import load, read_config, write_json
    dev = check_device(device)
    if run_dir is not None:
        if model_spec is not None:
            raise ToughenUsageError("give a RUN_DIR or --model, not both")
        cfg = read_config(run_dir)
        kind = kind_of(cfg)
        if kind is not None:  # a text run, say: its own sanity checks
            if active_n is not None or surrogate is not None:
                raise ToughenUsageError("--active-test and --surrogate are for image models; this run has its own "
                                        "audit")
            return kind.audit(run_dir, cfg, eps=eps, norm=norm, n=n, seed=seed, device=dev)
        train = cfg["train"]
        model = load(run_dir, device=dev)
        splits = load_data(train["data"], train["data_dir"], train["val_size"], options=train.get("data_options"))
        eps = eps if eps is not None else train["eps"]
        norm = norm or train["norm"]
        bounds = tuple(cfg["data_info"]["bounds"])
    else:
        if model_spec is None or data is None or eps is None:
            raise ToughenUsageError("give a RUN_DIR, or --model MODULE:FUNCTION (or a model name with --weights) "
                                    "with --data and --eps")
        model = load_factory_model(model_spec, weights, data, data_dir).to(dev)
        splits = load_data(data, data_dir)
        norm = norm or "linf"
        bounds = tuple(splits.bounds)
    if n < 1:
        raise ToughenUsageError(f"--n must be >= 1, got {n}")
    check_number("--active-n", active_n, low=1, whole=True, optional=True)
    if surrogate is not None:
        surrogate = ind.load_surrogate(surrogate, device=dev, num_classes=splits.num_classes,
                                       input_shape=splits.input_shape)
    report = audit(model, splits.x_test[:n], splits.y_test[:n], eps=eps, norm=norm, bounds=bounds, steps=steps,
                   n_queries=n_queries, seed=seed, surrogate=surrogate)
    report["model"] = str(run_dir) if run_dir is not None else model_spec
    if active_n is not None:
        gen = torch.Generator(device=model_device(model)).manual_seed(seed)
        report["active_test"] = binarization_test(
            model, splits.x_test[:active_n], splits.y_test[:active_n], default_attacks(steps, n_queries), eps=eps,
            norm=norm, bounds=bounds, generator=gen).to_dict()
    if run_dir is not None:
        write_json(Path(run_dir) / "audit.json", report)
    return report
