"""The worst-case attack suite: robust accuracy that a reviewer can trust.

AutoAttack's semantics (Croce and Hein 2020): one per-example ``robust`` mask; each attack runs
only on the examples still robust and can only flip them to not robust, so the final mask is the
worst case over every attack in the list (the loop is :func:`toughen.evaluation.cascade.cascade`;
a long evaluation resumes from a state file, :mod:`toughen.evaluation.resume`).

    result = toughen.evaluate(model, x, y, suite="standard", eps=0.3)
    result["robust_accuracy"], result["per_attack"]

Named suites:
    quick     PGD-20 with the cross-entropy loss, then PGD-20 with the margin loss.
    standard  APGD-CE, APGD-T (targeted DLR at the 9 top other classes), FAB-T (the boundary
              towards each of the same 9 classes), Square at 5,000 queries: the attacks and budgets
              of AutoAttack's "standard" version, in its order.
    thorough  APGD-CE and APGD-DLR with 5 restarts, APGD-T, Square at 10,000 queries with
              2 restarts.
    rand      for randomized models: APGD-CE and APGD-DLR with expectation over transformation
              (the gradient averaged over 20 passes), 100 steps and 1 restart each, AutoAttack's
              "rand" version. Each attack's point is judged by 10 independent passes (DRAWS): an
              example stays robust only if all 10 are right (worst of k), and the result adds the
              expected accuracy, the mean over the passes.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from toughen import threat
from toughen.attacks import ATTACKS, Attack
from toughen.attacks.trace import Trace, recording
from toughen.errors import ToughenUsageError, check_number
from toughen.evaluation import indicators as ind
from toughen.evaluation.accuracy import clean_correct, clean_right
from toughen.evaluation.cascade import Batch, cascade, model_device, per_batch
from toughen.evaluation.resume import State, fingerprint, pack
from toughen.precision import channels_last, check_amp, choose_precision
from toughen.runtime import stream_seed

SUITES: dict[str, list[Attack]] = {
    "quick": [
        Attack("pgd", {"steps": 20, "loss": "ce", "early_stop": True}),
        Attack("pgd", {"steps": 20, "loss": "margin", "early_stop": True}),
    ],
    "standard": [
        Attack("apgd", {"steps": 100, "loss": "ce"}),
        Attack("apgd", {"steps": 100, "loss": "dlr", "n_target_classes": 9}),
        Attack("fab", {"steps": 100, "targeted": True, "n_target_classes": 9}),
        Attack("square", {"n_queries": 5000}),
    ],
    "thorough": [
        Attack("apgd", {"steps": 100, "loss": "ce", "restarts": 5}),
        Attack("apgd", {"steps": 100, "loss": "dlr", "restarts": 5}),
        Attack("apgd", {"steps": 100, "loss": "dlr", "n_target_classes": 9}),
        Attack("square", {"n_queries": 10000, "restarts": 2}),
    ],
    "rand": [
        Attack("apgd", {"steps": 100, "loss": "ce", "eot": 20}),
        Attack("apgd", {"steps": 100, "loss": "dlr", "eot": 20}),
    ],
}
# Forward passes that judge each attack's point, for the suites of randomized models (others: 1).
DRAWS: dict[str, int] = {"rand": 10}


def short_label(attack: Attack) -> str:
    """A compact name for tables: pgd-20-ce, apgd-ce, apgd-t-dlr, fab-t, square-5000 (x5 for 5 restarts,
    -eot20 for the gradient averaged over 20 passes)."""
    o = attack.options
    restarts = f"x{o['restarts']}" if o.get("restarts", 1) > 1 else ""
    restarts += f"-eot{o['eot']}" if o.get("eot", 1) > 1 else ""
    if attack.name == "pgd":
        return f"pgd-{o.get('steps', 10)}-{o.get('loss', 'ce')}{restarts}"
    if attack.name == "apgd":
        return f"apgd-{'t-' if o.get('n_target_classes') else ''}{o.get('loss', 'ce')}{restarts}"
    if attack.name == "square":
        return f"square-{o.get('n_queries', 5000)}{restarts}"
    if attack.name == "fab":
        return f"fab{'-t' if o.get('targeted') else ''}{restarts}"
    return attack.label


def with_amp(attacks: Sequence[Attack], amp: str | None) -> list[Attack]:
    """The attacks with ``amp`` set on those that take it (pgd, apgd, square: each confirms every
    fooling input in full precision, see toughen.precision); the others run in full precision."""
    check_amp(amp)
    if amp is None:
        return list(attacks)
    return [Attack(a.name, {**a.options, "amp": amp})
            if "amp" in inspect.signature(ATTACKS.get(a.name)).parameters else a for a in attacks]


def list_suites() -> list[str]:
    return sorted(SUITES)


def resolve_suite(suite: str | Sequence[Attack]) -> tuple[str, list[Attack]]:
    """(name, attacks) for a suite name or a list of :class:`Attack`."""
    if isinstance(suite, str):
        if suite not in SUITES:
            raise ToughenUsageError(f"unknown suite {suite!r}; choose one of: {', '.join(list_suites())}")
        return suite, list(SUITES[suite])
    attacks = list(suite)
    if not attacks or not all(isinstance(a, Attack) for a in attacks):
        raise ToughenUsageError("suite must be a suite name or a non-empty list of toughen.attacks.Attack")
    return "custom", attacks


def suite_draws(name: str, draws: int | None = None) -> int:
    """The forward passes that judge each attack's point: ``draws`` if given, else the suite's own
    (10 for ``rand``, 1 for the others and for a list of attacks)."""
    if draws is None:
        return DRAWS.get(name, 1)
    return int(check_number("draws", draws, low=1, whole=True))


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    suite: str | Sequence[Attack] = "standard",
    eps: float,
    norm: str = "linf",
    bounds: threat.Bounds = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
    state_file: str | Path | None = None,
    amp: str | None = None,
    fast_layout: bool | str = "auto",
    draws: int | None = None,
    surrogate: nn.Module | None = None,
    indicators: bool | Iterable[str] = True,
) -> dict[str, Any]:
    """Clean and worst-case robust accuracy of ``model`` on (x, y) under a suite of attacks.

    Args:
        model: maps inputs in ``bounds`` to logits; put it in eval mode first.
        x, y: the inputs (CPU or the model's device) and int64 labels.
        suite: "quick", "standard", "thorough", "rand" (randomized models), or a list of
            :class:`toughen.attacks.Attack`.
        eps, norm, bounds: the threat model, eps in data units.
        seed: seeds each (attack, batch) pair's generator, so a resumed run gives the same answer.
        state_file: a JSON file to resume from and write progress to (removed when done).
        amp: "bf16" or "fp16" runs the gradient and query passes of pgd, apgd and square under
            autocast (about 2x faster on CPUs with bf16 instructions and on GPUs). Who counts as
            fooled is still decided in full precision, so robust accuracy is never understated by
            rounding; the attacks' search is slightly noisier. "auto" times fp32 against bf16 on
            the first batch and takes the faster (:func:`toughen.precision.choose_precision`).
        fast_layout: for image inputs (N, C, H, W), run the model in the channels-last memory
            format during the evaluation (same arithmetic, faster kernels on most CPUs and GPUs;
            restored afterwards); "auto" (default) times both layouts on the first batch.
        draws: for a randomized model, the independent forward passes that judge the clean input
            and each attack's point (default: the suite's own, 10 for "rand", else 1). An example
            counts as correct only if all of them are right (worst of k), so ``clean_accuracy`` and
            ``robust_accuracy`` are worst-of-k numbers, and the result adds the expected ones.
        surrogate: a model trained on the same data (standard training is best), on the model's
            device: after the suite, PGD-50 on the surrogate attacks the examples still robust and
            its points are judged on ``model`` (the attack ``transfer-pgd-50``: what it fools
            counts, the worst case is kept), for the ``transfer_failure`` indicator.
        indicators: the indicators of attack failure to compute (:mod:`toughen.evaluation.indicators`):
            True for all (default), False for none, or some of their names. They cost a per-step
            trace of pgd and apgd and a PGD-50 on at most 32 examples.

    Returns:
        a dict with ``clean_accuracy``, ``robust_accuracy``, ``suite``, ``per_attack`` (a list of
        ``{"attack", "robust_accuracy", "seconds"}``: the robust accuracy after each attack in
        order), ``eps``, ``norm``, ``n``, ``seconds``, ``amp`` and ``precision`` (what ran, and
        for "auto" the probe's timings), and ``robust``: the per-example bool mask. With
        ``draws`` > 1 also ``draws``, ``expected_clean_accuracy`` and ``expected_robust_accuracy``
        (the mean over examples of the fraction of passes right, at the clean input and at the
        point that decided the example: the attack that fooled it, else the last one), an
        ``expected_robust_accuracy`` in each ``per_attack`` row, and ``expected``, that fraction
        per example. Always ``warnings``: a ``{"indicator", "attack", "evidence", ...}`` per
        indicator of attack failure that fired (none for a healthy evaluation), and ``indicators``,
        the counts behind them. Silent successes are counted only for a deterministic model
        (``draws`` = 1). A resumed evaluation reads the counts of the batches done from its state
        file, so its warnings are those of the uninterrupted run.

    Example:
        >>> r = toughen.evaluate(model, x, y, suite="quick", eps=0.3)
        >>> r["robust_accuracy"], [a["robust_accuracy"] for a in r["per_attack"]]
    """
    name, attacks = resolve_suite(suite)
    draws = suite_draws(name, draws)
    wanted = ind.check_indicators(indicators)
    check_amp(amp)
    threat.check_eps(eps, norm, bounds)
    if len(x) != len(y) or len(x) == 0:
        raise ToughenUsageError(f"x and y must be non-empty and of the same length, got {len(x)} and {len(y)}")
    if batch_size < 1:
        raise ToughenUsageError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    if surrogate is not None:
        ind.check_surrogate(surrogate, model, x)
    transfer = [ind.Transfer(surrogate)] if surrogate is not None else []  # the last attack
    start = time.perf_counter()
    labels = [a.label for a in attacks + transfer] + ([f"draws={draws}"] if draws > 1 else [])
    state = State(Path(state_file) if state_file is not None else None,
                  lambda: fingerprint(model, x, y, labels, eps, norm, bounds, seed, batch_size, surrogate=surrogate))

    if draws == 1:
        clean, expected = clean_correct(model, x, y, batch_size), None
    else:  # a randomized model: correct means right in every draw; expected keeps the fraction
        right = clean_right(model, x, y, batch_size, draws)
        clean, expected = right == 1, state.expected(right)
    robust = state.robust(clean)  # the mask so far, when resuming
    kept = {"expected": expected.tolist()} if expected is not None else {}
    per_attack = state.per_attack()  # the rows of the attacks finished before an interruption
    resume_at, seconds = state.start()  # seconds: of the attack under way
    # a resumed evaluation goes on in the precision it started with
    precision = state.precision() or choose_precision(model, x[:batch_size].to(device), y[:batch_size].to(device),
                                                      amp=amp, channels_last=fast_layout if x.dim() == 4 else False)
    attacks = with_amp(attacks, precision.amp) + transfer
    short = [short_label(a) if isinstance(a, Attack) else a.label for a in attacks]
    # The counts behind the warnings, kept (and resumed) with the mask; pgd and apgd report their
    # steps to the trace, read and cleared after each batch.
    counts = state.indicators() or ind.new_counts(short, len(attacks) - 1 if transfer else None)
    kept["indicators"] = counts
    trace = Trace() if wanted & {"incomplete_optimization", "silent_success"} else None

    # The resume file is written from the cascade's callbacks: after every batch, and every attack.
    def on_batch(step: Batch) -> None:
        nonlocal seconds
        seconds += step.seconds
        if expected is not None:
            kept["expected"] = expected.tolist()
        if trace is not None:
            ind.count_batch(counts["attacks"][step.attack], trace, step.still, silent=draws == 1)
            trace.clear()
        state.save(per_attack=per_attack, robust=pack(robust), attack=step.attack, todo=pack(step.todo),
                   batches_done=step.batch + 1, seconds=seconds, precision=precision.to_dict(), **kept)

    def on_attack(a_i: int) -> None:
        nonlocal seconds
        per_attack.append({"attack": short[a_i], "robust_accuracy": robust.float().mean().item(),
                           "seconds": seconds})
        if expected is not None:
            per_attack[-1]["expected_robust_accuracy"] = expected.mean().item()
            kept["expected"] = expected.tolist()
        seconds = 0.0
        state.save(per_attack=per_attack, robust=pack(robust), precision=precision.to_dict(), **kept)

    with channels_last(model, precision.channels_last), recording(trace):
        cascade(model, x, y, attacks, eps=eps, norm=norm, bounds=bounds, robust=robust, batch_size=batch_size,
                generators=per_batch(seed, device), start=resume_at, on_batch=on_batch, on_attack=on_attack,
                progress=progress, draws=draws, expected=expected)
    state.clear()
    if "unconstrained_failure" in wanted:  # cheap: early-stopped, and on a healthy model over in a few steps
        counts["unconstrained"] = ind.unconstrained(model, x, y, clean, norm=norm, bounds=bounds, seed=seed,
                                                    draws=draws)
    warnings = ind.warnings_of(counts, int(clean.sum()), [round(p["robust_accuracy"] * len(x)) for p in per_attack],
                               len(x), wanted)
    randomized = {} if expected is None else {
        "draws": draws, "expected_clean_accuracy": right.mean().item(),
        "expected_robust_accuracy": expected.mean().item(), "expected": expected}
    return {
        "clean_accuracy": clean.float().mean().item(),
        "robust_accuracy": robust.float().mean().item(),
        "suite": name,
        "per_attack": per_attack,
        "eps": eps,
        "norm": norm,
        "amp": precision.amp,
        "precision": precision.to_dict(),
        "n": len(x),
        "seconds": time.perf_counter() - start,
        "robust": robust,
        "warnings": warnings,
        "indicators": counts,
        **randomized,
    }


def evaluate_loader(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    suite: str | Sequence[Attack] = "standard",
    eps: float,
    norm: str = "linf",
    bounds: threat.Bounds = (0.0, 1.0),
    seed: int = 0,
    progress: bool = False,
    amp: str | None = None,
    draws: int | None = None,
    surrogate: nn.Module | None = None,
    indicators: bool | Iterable[str] = True,
) -> dict[str, Any]:
    """:func:`evaluate` over an iterable of (x, y) batches, for data that does not fit in memory.

    The cascade is per example, so running it batch by batch gives the same worst case; the
    per-attack accuracies and seconds are summed over batches. Only the bool robust mask (and, with
    ``draws`` > 1, the per-example ``expected`` fraction) is kept. The indicators' counts are
    summed over batches too (the unconstrained attack runs on the first batch only), so the
    warnings are those of the whole data.
    """
    name, attacks = resolve_suite(suite)
    draws = suite_draws(name, draws)
    wanted = ind.check_indicators(indicators)
    k = len(attacks) + (surrogate is not None)  # the transfer attack adds a row
    n, clean_hits, masks, seconds, counts = 0, 0, [], [0.0] * k, []
    after, expected, exp_clean, exp_after = [0] * k, [], 0.0, [0.0] * k
    start = time.perf_counter()
    for b, (xb, yb) in enumerate(tqdm(loader, desc="batches", disable=not progress, leave=False)):
        r = evaluate(model, xb, yb, suite=attacks, eps=eps, norm=norm, bounds=bounds, seed=stream_seed(seed, b),
                     batch_size=len(xb), amp=amp, draws=draws, surrogate=surrogate,
                     indicators=wanted if b == 0 else wanted - {"unconstrained_failure"})
        precision = r["precision"]  # chosen per batch; the same choice for batches of one shape
        n += r["n"]
        clean_hits += round(r["clean_accuracy"] * r["n"])
        masks.append(r["robust"])
        counts.append(r["indicators"])
        for i, row in enumerate(r["per_attack"]):
            after[i] += round(row["robust_accuracy"] * r["n"])
            seconds[i] += row["seconds"]
            exp_after[i] += row.get("expected_robust_accuracy", 0.0) * r["n"]
        if draws > 1:
            expected.append(r["expected"])
            exp_clean += r["expected_clean_accuracy"] * r["n"]
    if n == 0:
        raise ToughenUsageError("the loader yielded no examples")
    robust = torch.cat(masks)
    labels = [row["attack"] for row in r["per_attack"]]
    per_attack = [{"attack": label, "robust_accuracy": after[i] / n, "seconds": seconds[i]}
                  for i, label in enumerate(labels)]
    merged = ind.merge_counts(counts)
    randomized = {}
    if draws > 1:
        for i, row in enumerate(per_attack):
            row["expected_robust_accuracy"] = exp_after[i] / n
        expected = torch.cat(expected)
        randomized = {"draws": draws, "expected_clean_accuracy": exp_clean / n,
                      "expected_robust_accuracy": expected.mean().item(), "expected": expected}
    return {
        "clean_accuracy": clean_hits / n,
        "robust_accuracy": robust.float().mean().item(),
        "suite": name,
        "per_attack": per_attack,
        "eps": eps, "norm": norm, "amp": precision["amp"], "precision": precision, "n": n,
        "seconds": time.perf_counter() - start, "robust": robust,
        "warnings": ind.warnings_of(merged, clean_hits, after, n, wanted), "indicators": merged, **randomized,
    }


def robustness_curve(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_list: Sequence[float],
    *,
    suite: str | Sequence[Attack] = "quick",
    norm: str = "linf",
    bounds: threat.Bounds = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
    amp: str | None = None,
    draws: int | None = None,
    surrogate: nn.Module | None = None,
    indicators: bool | Iterable[str] = True,
) -> list[dict[str, Any]]:
    """Robust accuracy at each eps of ``eps_list`` (sorted ascending), in one call.

    An example fooled at a smaller eps is fooled at every larger one (the larger ball contains the
    smaller), so each eps attacks only the examples still robust at the previous one: the curve is
    a worst case and cheaper than independent evaluations. Returns one
    ``{"eps", "robust_accuracy", "per_attack", "seconds"}`` per eps (with ``draws`` > 1, as in
    :func:`evaluate`, each row and per_attack row adds ``expected_robust_accuracy``; an example
    fooled at a smaller eps keeps its expected fraction from there). Each row has the ``warnings``
    of the indicators of attack failure at its eps (:func:`evaluate`; the unconstrained attack,
    which does not depend on eps, runs at the first eps only).
    """
    draws = suite_draws(resolve_suite(suite)[0], draws)
    wanted = ind.check_indicators(indicators)
    eps_values = sorted(float(e) for e in eps_list)
    if not eps_values:
        raise ToughenUsageError("the eps list is empty; give values such as 0.1,0.2,0.3")
    for e in eps_values:
        threat.check_eps(e, norm, bounds)
    if len(x) != len(y) or len(x) == 0:
        raise ToughenUsageError(f"x and y must be non-empty and of the same length, got {len(x)} and {len(y)}")
    if draws == 1:
        alive, expected = clean_correct(model, x, y, batch_size), None
    else:
        expected = clean_right(model, x, y, batch_size, draws)
        alive = expected == 1
    rows = []
    for e in eps_values:
        idx = alive.nonzero().squeeze(1)
        if e == 0 or len(idx) == 0:
            rows.append({"eps": e, "robust_accuracy": alive.float().mean().item(), "per_attack": [], "seconds": 0.0,
                         "warnings": []})
            if expected is not None:
                rows[-1]["expected_robust_accuracy"] = expected.mean().item()
            continue
        r = evaluate(model, x[idx], y[idx], suite=suite, eps=e, norm=norm, bounds=bounds, seed=seed,
                     batch_size=batch_size, progress=progress, amp=amp, draws=draws, surrogate=surrogate,
                     indicators=wanted)
        wanted = wanted - {"unconstrained_failure"}
        alive[idx] = r["robust"]
        scale = len(idx) / len(x)
        per_attack = [{**p, "robust_accuracy": p["robust_accuracy"] * scale} for p in r["per_attack"]]
        rows.append({"eps": e, "robust_accuracy": alive.float().mean().item(), "seconds": r["seconds"],
                     "per_attack": per_attack, "warnings": r["warnings"]})
        if expected is not None:  # the examples not attacked at this eps keep theirs
            others = (expected.sum() - expected[idx].sum()).item() / len(x)
            for p in per_attack:
                p["expected_robust_accuracy"] = others + p["expected_robust_accuracy"] * scale
            expected[idx] = r["expected"]
            rows[-1]["expected_robust_accuracy"] = expected.mean().item()
    return rows
