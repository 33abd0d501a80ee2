"""Indicators of attack failure: the cheap ones, computed on every suite evaluation.

Pintor et al. (2022, "Indicators of Attack Failure: Debugging and Improving Optimization of
Adversarial Examples", NeurIPS) name six ways a gradient attack fails without saying so: silent
success, incomplete optimization, transfer failure, unavailable gradients, unstable predictions and
unconstrained attack failure. A robust accuracy measured through a failing attack is too high, and
nothing in the number shows it. :func:`toughen.evaluate` measures these as it runs and returns a
warning, with its evidence, for each one that fires:

    incomplete_optimization  the loss of the examples an attack left robust was still rising over
                             its last steps (read from the attack's per-step trace)
    silent_success           an iterate fooled the model but the attack returned a point that does not
    attack_order             an attack fooled none of the examples it attacked while a later one fooled many
    transfer_failure         PGD on a standard-trained surrogate, transferred, fools examples the
                             white-box attacks left robust (only with ``surrogate=``)
    unconstrained_failure    PGD with eps nearly the whole input range leaves examples robust

The audit (:func:`toughen.evaluation.audit.audit`) runs the six of the paper, these among them.

The per-attack numbers behind the warnings are plain counts (:func:`new_counts`), so batches of a
loader, ranks of torchrun and a resumed evaluation add up to the same warnings
(:func:`merge_counts`, :func:`warnings_of`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toughen import threat
from toughen.attacks.pgd import pgd
from toughen.attacks.trace import Trace, recording
from toughen.errors import ToughenUsageError
from toughen.evaluation.cascade import model_device, right_in_draws

INDICATORS = ("incomplete_optimization", "silent_success", "attack_order", "transfer_failure",
              "unconstrained_failure")

# incomplete_optimization: per example left robust, the share of its loss's whole rise (from the
# start to the best of the run) that came in the last TAIL of the steps. Measured on the PGD-trained
# digits model at its eps (142-183 examples left robust): APGD-CE/APGD-T at 100 steps at most 0.005,
# PGD-20/50 (2.5 eps / steps) a median of 0.01 and at most 0.11; PGD-10 with a step of eps / 100
# (too small) a median of 0.22 and above 0.1 everywhere. An example counts as still rising above
# RISE, and an attack is flagged when at least RISING_SHARE of the measured examples (and
# MIN_COUNT) are: about 1% of them on the healthy attacks, all of them on the starved one.
TAIL = 0.2
RISE = 0.1
RISING_SHARE = 0.25
MIN_STEPS = 5  # a run this short (FGSM) has no "last steps" to read
MIN_COUNT = 3
# attack_order: a later attack fooled at least this share of the examples (and MIN_COUNT)
ORDER_SHARE = 0.05
# unconstrained_failure: PGD with the margin loss on a few clean-correct examples at eps nearly
# the whole range; on a healthy model early stopping ends it within a few steps.
UNCONSTRAINED_N = 32
UNCONSTRAINED_STEPS = 50
# transfer_failure: PGD on the surrogate
TRANSFER_STEPS = 50


def check_indicators(indicators: bool | Iterable[str]) -> frozenset[str]:
    """The indicators to compute: True for all, False for none, or some of :data:`INDICATORS`."""
    if indicators is True:
        return frozenset(INDICATORS)
    if indicators is False or indicators is None:
        return frozenset()
    wanted = frozenset(indicators)
    unknown = sorted(wanted - set(INDICATORS))
    if unknown:
        raise ToughenUsageError(f"unknown indicator(s) {', '.join(unknown)}; choose from: {', '.join(INDICATORS)}")
    return wanted


def unconstrained_eps(norm: str, bounds: threat.Bounds, x: torch.Tensor) -> float:
    """A radius that takes in nearly every input: 0.99 of the range for L-inf, half the range
    times sqrt(d) for L2 (the audit's ``unbounded_attack_succeeds`` uses the same)."""
    width = bounds[1] - bounds[0]
    return 0.99 * width if norm == "linf" else 0.5 * width * math.sqrt(x[0].numel())


# ----------------------------------------------------------------------------- the attacks' trace

def reduce_trace(trace: Trace, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of a batch of ``n`` that the traced attacks ran on (CPU tensors): whether it was
    traced at all, whether an iterate fooled the model at some step, and the share of the loss's
    rise that came in the last TAIL of the steps, in the run that reached the highest loss (NaN
    where no run of at least MIN_STEPS steps kept the example to the end: fooled, or not traced)."""
    if not trace.runs:
        return torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), torch.full((n,), float("nan"))
    device = trace.runs[0].rows.device
    seen = torch.zeros(n, dtype=torch.bool, device=device)
    ever = torch.zeros(n, dtype=torch.bool, device=device)
    share = torch.full((n,), float("nan"), device=device)
    top = torch.full((n,), float("-inf"), device=device)
    for run in trace.runs:
        steps = len(run.steps)
        if steps == 0:
            continue
        loss = torch.full((steps, len(run.rows)), float("nan"), device=device)
        for t, (at, value, fooled) in enumerate(run.steps):
            loss[t, at] = value
            seen[run.rows[at]] = True
            ever[run.rows[at[fooled]]] = True
        if steps < MIN_STEPS:
            continue
        whole = ~loss.isnan().any(0)  # attacked at every step of the run (NaN losses count as not)
        best = loss[:, whole].cummax(0).values
        end, before_tail = best[-1], best[math.ceil((1 - TAIL) * steps) - 1]
        rise = end - loss[0, whole]
        tail = torch.where(rise > 0, (end - before_tail) / rise.clamp_min(1e-12), torch.zeros_like(rise))
        rows = run.rows[whole]
        higher = end > top[rows]
        top[rows[higher]], share[rows[higher]] = end[higher], tail[higher]
    return seen.cpu(), ever.cpu(), share.cpu()


def new_counts(labels: Sequence[str], transfer: int | None = None) -> dict[str, Any]:
    """The per-attack counts of one evaluation, JSON-able (they go to the resume file and the
    result): ``attacked`` examples, ``traced`` (with a per-step trace), ``silent`` (fooled at a
    step, not at the returned point), ``measured`` (left robust after a run long enough to read),
    ``rising`` (of those, still rising) and ``share_sum`` (their shares of the rise, summed)."""
    counts: dict[str, Any] = {"attacks": [{"attack": label, "attacked": 0, "traced": 0, "silent": 0, "measured": 0,
                                           "rising": 0, "share_sum": 0.0} for label in labels]}
    if transfer is not None:
        counts["transfer"] = transfer
    return counts


def count_batch(row: dict[str, Any], trace: Trace, still: torch.Tensor, *, silent: bool) -> None:
    """Add one batch of an attack to its counts ``row``: ``trace`` holds the batch's runs,
    ``still`` which examples the cascade found robust at the returned points. ``silent``: count
    silent successes (not for a randomized model, whose verdict at one point changes by chance)."""
    traced, ever, share = reduce_trace(trace, len(still))
    measured = still & ~share.isnan()
    row["attacked"] += len(still)
    row["traced"] += int(traced.sum())
    row["silent"] += int((ever & still).sum()) if silent else 0
    row["measured"] += int(measured.sum())
    row["rising"] += int((share[measured] > RISE).sum())
    row["share_sum"] += float(share[measured].sum())


def still_rising(row: dict[str, Any]) -> bool:
    """Whether an attack's counts ``row`` show incomplete optimization: at least RISING_SHARE of
    the examples it left robust (and MIN_COUNT) were still rising by more than RISE."""
    return row["measured"] > 0 and row["rising"] >= max(MIN_COUNT, math.ceil(RISING_SHARE * row["measured"]))


def merge_counts(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The counts of several evaluations of the same attacks on disjoint examples (a loader's
    batches, torchrun's ranks), added up; the unconstrained check's rows are added too."""
    merged = new_counts([r["attack"] for r in parts[0]["attacks"]], parts[0].get("transfer"))
    for part in parts:
        for into, row in zip(merged["attacks"], part["attacks"]):
            for key in ("attacked", "traced", "silent", "measured", "rising", "share_sum"):
                into[key] += row[key]
        if "unconstrained" in part:
            u = merged.setdefault("unconstrained", {**part["unconstrained"], "n": 0, "robust": 0})
            u["n"] += part["unconstrained"]["n"]
            u["robust"] += part["unconstrained"]["robust"]
    return merged


# ----------------------------------------------------------------------------- the extra attacks

@dataclass(frozen=True, eq=False)
class Transfer:
    """The transfer attack of ``transfer_failure``: PGD (cross-entropy, ``steps`` steps) on the
    ``surrogate``, whose points the cascade then judges on the evaluated model. Its steps are not
    traced: they fool the surrogate, not the model."""

    surrogate: nn.Module
    steps: int = TRANSFER_STEPS

    @property
    def label(self) -> str:
        return f"transfer-pgd-{self.steps}"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
                 bounds: threat.Bounds = (0.0, 1.0), generator: torch.Generator | None = None) -> torch.Tensor:
        with recording(None):
            return pgd(self.surrogate, x, y, eps=eps, norm=norm, bounds=bounds, steps=self.steps, loss="ce",
                       generator=generator)


def check_surrogate(surrogate: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    """A usage error unless ``surrogate`` runs where ``model`` does and has as many classes."""
    if model_device(surrogate) != model_device(model):
        raise ToughenUsageError(f"the surrogate is on {model_device(surrogate)}, the model on {model_device(model)}: "
                                "put both on one device")
    with torch.no_grad():
        probe = x[:1].to(model_device(model))
        k_model, k_surrogate = model(probe).shape[-1], surrogate(probe).shape[-1]
    if k_model != k_surrogate:
        raise ToughenUsageError(f"the surrogate has {k_surrogate} classes, the model {k_model}: a surrogate must be "
                                "trained on the same data")


def transfer_fooled(model: nn.Module, surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                    norm: str, bounds: threat.Bounds, seed: int) -> torch.Tensor:
    """Per example of (x, y) (a CPU bool), whether the :class:`Transfer` attack's point fools ``model``."""
    device = model_device(model)
    xs, ys = x.to(device), y.to(device)
    x_t = Transfer(surrogate)(model, xs, ys, eps=eps, norm=norm, bounds=bounds,
                              generator=torch.Generator(device=device).manual_seed(seed))
    return right_in_draws(model, x_t, ys, 1) < 1


def load_surrogate(run_dir: str | Path, *, device: torch.device | str, num_classes: int,
                   input_shape: Sequence[int]) -> nn.Module:
    """The model of the image run ``run_dir`` as a transfer attack's surrogate (``--surrogate``),
    or a one-line usage error: not a finished run, a text run, or other classes or input shape."""
    from toughen.runs import load, read_config

    cfg = read_config(run_dir)
    if cfg.get("kind") is not None:
        raise ToughenUsageError(f"--surrogate {run_dir} is a {cfg['kind']} run; a surrogate is an image run on the "
                                "same data")
    info = cfg["data_info"]
    if info["num_classes"] != num_classes:
        raise ToughenUsageError(f"--surrogate {run_dir} has {info['num_classes']} classes, the evaluated model "
                                f"{num_classes}: train the surrogate on the same data")
    if list(info["input_shape"]) != list(input_shape):
        raise ToughenUsageError(f"--surrogate {run_dir} takes inputs of shape {tuple(info['input_shape'])}, the "
                                f"evaluated model {tuple(input_shape)}: train the surrogate on the same data")
    return load(run_dir, device=device)


def unconstrained(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, *, norm: str,
                  bounds: threat.Bounds, seed: int, draws: int = 1) -> dict[str, Any]:
    """``unconstrained_failure``'s measurement: PGD with the margin loss, early-stopped, at eps
    nearly the whole input range, on the first UNCONSTRAINED_N examples of ``clean`` (the
    clean-correct mask). ``{"n", "robust", "eps", "steps"}``: how many it left robust, which on a
    model whose gradients lead anywhere is none."""
    idx = clean.nonzero().squeeze(1)[:UNCONSTRAINED_N]
    eps = unconstrained_eps(norm, bounds, x)
    row = {"n": len(idx), "robust": 0, "eps": eps, "steps": UNCONSTRAINED_STEPS}
    if len(idx) == 0:
        return row
    device = model_device(model)
    xs, ys = x[idx].to(device), y[idx].to(device)
    with recording(None):
        x_adv = pgd(model, xs, ys, eps=eps, norm=norm, bounds=bounds, steps=UNCONSTRAINED_STEPS, loss="margin",
                    early_stop=True, generator=torch.Generator(device=device).manual_seed(seed))
    row["robust"] = int((right_in_draws(model, x_adv, ys, draws) == 1).sum())
    return row


# ----------------------------------------------------------------------------- the warnings

def _warning(indicator: str, attack: str, evidence: str, **values: Any) -> dict[str, Any]:
    return {"indicator": indicator, "attack": attack, "evidence": evidence, **values}


def warnings_of(counts: dict[str, Any], clean_count: int, after: Sequence[int], n: int,
                wanted: Iterable[str] = INDICATORS) -> list[dict[str, Any]]:
    """The warnings of one evaluation of ``n`` examples: ``clean_count`` were right clean and
    ``after[i]`` still robust after attack i (its per_attack row); ``counts`` from
    :func:`new_counts`, filled in. Only the indicators in ``wanted`` are reported."""
    wanted = set(wanted)
    rows = counts["attacks"]
    transfer = counts.get("transfer")
    before = [clean_count, *after[:-1]]
    fooled = [b - a for b, a in zip(before, after)]
    out = []
    for i, row in enumerate(rows):
        label = row["attack"]
        if "incomplete_optimization" in wanted and still_rising(row):
            mean = row["share_sum"] / row["measured"]
            out.append(_warning(
                "incomplete_optimization", label,
                f"{row['rising']} of the {row['measured']} examples {label} left robust were still gaining loss when "
                f"its steps ran out (more than {RISE:.0%} of the loss's rise came in the last {TAIL:.0%} of the steps; "
                f"{mean:.0%} on average): more steps or a larger step size may fool some of them",
                rising=row["rising"], measured=row["measured"], mean_tail_share=mean))
        if "silent_success" in wanted and row["silent"]:
            out.append(_warning(
                "silent_success", label,
                f"{label} fooled {row['silent']} of the {row['attacked']} examples it attacked at some step but "
                "returned a point the model classifies correctly: the attack lost adversarial examples it had found, "
                "and they count as robust",
                silent=row["silent"], attacked=row["attacked"]))
        if "attack_order" in wanted and i != transfer and before[i] > 0 and fooled[i] == 0:
            later = [j for j in range(i + 1, len(rows)) if j != transfer]
            j = max(later, key=lambda j: fooled[j], default=None)
            if j is not None and fooled[j] >= max(MIN_COUNT, math.ceil(ORDER_SHARE * n)):
                out.append(_warning(
                    "attack_order", label,
                    f"{label} fooled none of the {before[i]} examples it attacked, while {rows[j]['attack']}, which "
                    f"ran after it, fooled {fooled[j]} ({fooled[j] / n:.1%} of all): the first attack's gradients may "
                    "be masked",
                    attacked=before[i], later=rows[j]["attack"], later_fooled=fooled[j]))
    if "transfer_failure" in wanted and transfer is not None and fooled[transfer] > 0:
        label = rows[transfer]["attack"]
        out.append(_warning(
            "transfer_failure", label,
            f"PGD on the surrogate, transferred, fooled {fooled[transfer]} of the {before[transfer]} examples the "
            f"white-box attacks left robust ({fooled[transfer] / n:.1%} of all): they missed adversarial examples "
            "that exist; those examples count as not robust (the worst case is kept)",
            fooled=fooled[transfer], attacked=before[transfer]))
    u = counts.get("unconstrained")
    if "unconstrained_failure" in wanted and u is not None and u["robust"] > 0:
        label = f"pgd-{u['steps']}-margin"
        out.append(_warning(
            "unconstrained_failure", label,
            f"{label} at eps {u['eps']:.3g} (nearly the whole input range) left {u['robust']} of {u['n']} "
            "clean-correct examples robust; it should fool all of them: the gradients do not lead the attack anywhere",
            robust=u["robust"], n=u["n"], eps=u["eps"]))
    return out
