"""Per-example robust radius: the smallest adversarial perturbation found for each example, and with
it the whole robustness curve from one run.

Each eps of :func:`toughen.evaluation.suite.robustness_curve` is a separate attack run. A
minimal-norm attack asks a different question, once per example: how close to x is the closest
adversarial input it can find? That distance r_i is the example's robust radius *from above* (an
attack can miss a closer point), and robust accuracy at any eps is the fraction of examples with
r_i > eps. So one run gives the curve at every eps, and like any attack's it is an upper bound on
the true robust accuracy.

    r = robust_radii(model, x, y, norm="linf")
    r["radius"]                                  # (N,): 0 where x is misclassified, inf where none found
    radius_curve(r["radius"], [0.1, 0.2, 0.3])   # [{"eps": 0.1, "robust_accuracy": ...}, ...]

The search is FAB's minimal mode (Croce and Hein 2020, :func:`toughen.attacks.fab.fab_minimal`):
untargeted, then FAB-T towards each of the classes the model ranks highest after y; per example the
smaller. FAB approaches the boundary from outside and stops a little beyond it (1-4% for L-inf on
an adversarially trained MNIST model), which matters where radii pile up: a model trained at eps has
many examples whose radius is eps itself. So at the eps values that matter (``refine_at``: the
training eps, a sweep's), the examples whose radius lies within ``window`` above are attacked with
APGD-CE and APGD-T at that eps, and each one fooled gets the smaller radius. Every radius is the
norm of an input that was checked to fool the model.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from toughen import threat
from toughen.attacks import Attack
from toughen.attacks.fab import fab_minimal
from toughen.attacks.pgd import _check_inputs
from toughen.errors import ToughenUsageError, check_number
from toughen.evaluation.cascade import model_device
from toughen.evaluation.suite import short_label
from toughen.logits import logits_of

MAX_STORED = 5000  # a row of evaluations.jsonl keeps every radius up to this many examples
GRID_POINTS = 50  # intervals of the default curve grid, from 0 to the largest radius found
HISTOGRAM_BINS = 25
# The refinement's attacks: the two gradient attacks of the standard suite. On the PGD-trained MNIST
# model of docs/evaluation.md, Square fooled nothing they had not, in 70% of the suite's time.
REFINE_ATTACKS = (
    Attack("apgd", {"steps": 100, "loss": "ce"}),
    Attack("apgd", {"steps": 100, "loss": "dlr", "n_target_classes": 9}),
)


def _norms(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def robust_radii(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    bounds: threat.Bounds = (0.0, 1.0),
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    refine_at: Sequence[float] = (),
    window: float = 0.1,
    refine_attacks: Sequence[Attack] = REFINE_ATTACKS,
    batch_size: int = 500,
    amp: str | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Per example, the closest adversarial input that FAB and FAB-T find, and its distance: an
    upper bound on the example's robust radius.

    Args:
        model: maps inputs in ``bounds`` to logits; put it in eval mode first.
        x, y: inputs ``(N, ...)`` inside ``bounds`` (CPU or the model's device) and int64 labels.
        norm: "linf" or "l2", the norm of the radius.
        steps, restarts: of each FAB run (:func:`toughen.attacks.fab.fab_minimal`).
        n_target_classes: FAB-T's targets, the classes ranked highest after y at x (0: untargeted
            FAB only). Each costs a run of ``steps`` with one backward pass per step.
        refine_at: eps values at which to check the examples whose radius r lies in
            (eps, (1 + window) eps] with ``refine_attacks`` (default APGD-CE, then APGD-T on those
            still robust); an example fooled gets radius min(its norm, eps). Only these examples
            are attacked, so it costs a fraction of a per-eps evaluation.
        batch_size: examples per FAB call.
        amp: the precision of FAB's passes (a new closest point is checked in fp32).
        generator: randomness of FAB's restarts (with ``restarts`` > 1) and of the refinement's
            random starts.

    Returns:
        a dict with ``radius`` (N,) on x's device (0 where x is misclassified, inf where nothing
        was found), ``x_adv`` (the input at that distance, x where none), ``clean`` (bool mask),
        ``searches`` (per search: its name, how many radii it made smaller, for a refinement how
        many examples it attacked, the median radius after it and its seconds) and ``seconds``.

    Example:
        >>> r = robust_radii(model, x, y, norm="l2", n_target_classes=3)
        >>> (r["radius"] > 1.5).float().mean()  # robust accuracy at eps 1.5, up to FAB's strength
    """
    _check_inputs(x, y, None, bounds)
    threat.check_norm(norm)
    check_number("steps", steps, low=1, whole=True)
    check_number("restarts", restarts, low=1, whole=True)
    check_number("n_target_classes", n_target_classes, low=0, whole=True)
    check_number("batch_size", batch_size, low=1, whole=True)
    check_number("window", window, low=0)
    for e in refine_at:
        threat.check_eps(e, norm, bounds)
    if len(x) == 0:
        raise ToughenUsageError("no examples: x is empty")
    device, start = model_device(model), time.perf_counter()
    radius = torch.full((len(x),), math.inf, dtype=x.dtype)
    x_adv = x.detach().cpu().clone()
    clean = torch.zeros(len(x), dtype=torch.bool)
    searches = [("fab", {"targeted": False})]
    if n_target_classes:
        searches.append((f"fab-t{n_target_classes}", {"targeted": True, "n_target_classes": int(n_target_classes)}))
    log = []
    bar = tqdm(total=len(searches) * len(x), desc="radius", disable=not progress, leave=False)
    for name, options in searches:
        t, improved = time.perf_counter(), 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            xa, rb = fab_minimal(model, xb, yb, norm=norm, bounds=bounds, steps=steps, restarts=restarts, amp=amp,
                                 generator=generator, **options)
            rb, xa = rb.cpu(), xa.cpu()
            if name == "fab":  # its radius is 0 exactly where the clean input is misclassified
                clean[i:i + batch_size] = rb > 0
            better = rb < radius[i:i + batch_size]
            improved += int((better & torch.isfinite(radius[i:i + batch_size])).sum())
            radius[i:i + batch_size] = torch.where(better, rb, radius[i:i + batch_size])
            x_adv[i:i + batch_size][better] = xa[better]
            bar.update(len(xb))
        log.append({"search": name, "improved": improved, "median": _finite_or_none(radius.median().item()),
                    "seconds": time.perf_counter() - t})
    bar.close()
    for e in sorted(set(float(e) for e in refine_at if e > 0)):
        log.append(_refine(model, x, y, radius, x_adv, e, window, refine_attacks, norm=norm, bounds=bounds,
                           batch_size=batch_size, generator=generator, progress=progress))
    return {"radius": radius.to(x.device), "x_adv": x_adv.to(x.device), "clean": clean, "searches": log,
            "norm": norm, "seconds": time.perf_counter() - start}


def _refine(model, x, y, radius, x_adv, eps, window, attacks, *, norm, bounds, batch_size, generator, progress):
    """Attack, at ``eps``, the examples whose radius lies in (eps, (1 + window) eps], each attack on
    those not fooled yet; update ``radius`` and ``x_adv`` in place where one is fooled."""
    t, device = time.perf_counter(), model_device(model)
    near = ((radius > eps) & (radius <= eps * (1 + window))).nonzero().squeeze(1)
    todo, improved = near, 0
    for attack in attacks:
        if len(todo) == 0:
            break
        for i in tqdm(range(0, len(todo), batch_size), desc=f"refine at {eps:g}", disable=not progress, leave=False):
            idx = todo[i:i + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            xa = attack(model, xb, yb, eps=eps, norm=norm, bounds=bounds, generator=generator)
            with torch.no_grad():
                fooled = (logits_of(model, xa).argmax(1) != yb).cpu()
            hit = idx[fooled]
            # APGD keeps ||delta|| <= eps; (x + delta) - x can round one float above it
            radius[hit] = torch.minimum(_norms(xa[fooled].cpu() - x[hit].cpu(), norm).to(radius.dtype),
                                        torch.tensor(eps, dtype=radius.dtype))
            x_adv[hit] = xa[fooled].cpu().to(x_adv.dtype)
            improved += len(hit)
        todo = todo[radius[todo] > eps]
    return {"search": f"refine at {eps:g}: " + ", ".join(short_label(a) for a in attacks),
            "checked": len(near), "improved": improved, "median": _finite_or_none(radius.median().item()),
            "seconds": time.perf_counter() - t}


# ---------------------------------------------------------------------------- reading the radii

def radius_curve(radius: torch.Tensor, eps_list: Sequence[float]) -> list[dict[str, float]]:
    """Robust accuracy at each eps: the fraction of examples whose radius is larger than eps (an
    example with radius exactly eps was fooled by an input in the closed ball). Non-increasing."""
    # compared in the radii's own precision, as fab(eps=...) decides "fooled within eps"
    r = radius.detach().flatten().cpu()
    return [{"eps": float(e), "robust_accuracy": int((r > e).sum()) / max(len(r), 1)} for e in sorted(eps_list)]


def default_grid(radius: torch.Tensor, *, include: Sequence[float] = (), points: int = GRID_POINTS) -> list[float]:
    """``points`` + 1 evenly spaced eps from 0 to the largest finite radius (rounded up to two
    significant digits), with the values of ``include`` added."""
    finite = radius[torch.isfinite(radius)]
    top = finite.max().item() if len(finite) else 0.0
    top = max([top, *include]) or 1.0
    top = _round_up(top)
    grid = {round(top * k / points, 10) for k in range(points + 1)} | {float(e) for e in include}
    return sorted(grid)


def radius_histogram(radius: torch.Tensor, *, bins: int = HISTOGRAM_BINS, top: float | None = None) -> dict[str, Any]:
    """Counts of the positive finite radii in ``bins`` equal bins over [0, top] (default: the largest
    radius, rounded up), with the misclassified (radius 0) and none-found (inf) examples apart."""
    r = radius.detach().flatten().cpu().double()
    positive = r[(r > 0) & torch.isfinite(r)]
    if top is None:
        top = _round_up(positive.max().item()) if len(positive) else 1.0
    # histc drops values past max: those above top (a float32 0.4 is above 0.4) go in the last bin
    counts = torch.histc(positive.clamp(max=top), bins=bins, min=0.0, max=top) if len(positive) else torch.zeros(bins)
    return {"edges": [round(top * k / bins, 10) for k in range(bins + 1)], "counts": [int(c) for c in counts],
            "zero": int((r == 0).sum()), "none_found": int(torch.isinf(r).sum())}


def radius_summary(radius: torch.Tensor, *, eps_grid: Sequence[float] | None = None,
                   store: int = MAX_STORED) -> dict[str, Any]:
    """The JSON-safe record of a set of radii: median (the lower one: robust accuracy at eps = median is
    at most 50%), the curve over ``eps_grid`` (default :func:`default_grid`), the histogram, the count
    of misclassified (radius 0) and none-found (inf, written null) examples, and, for at most ``store``
    examples, every radius rounded to 6 significant digits."""
    r = radius.detach().flatten().cpu()
    grid = default_grid(r) if eps_grid is None else list(eps_grid)
    finite = r[torch.isfinite(r) & (r > 0)]
    out = {
        "median": _finite_or_none(r.median().item()),
        "median_of_correct": _finite_or_none(r[r > 0].median().item()) if (r > 0).any() else None,
        "max_found": finite.max().item() if len(finite) else None,
        "n": len(r),
        "misclassified": int((r == 0).sum()),
        "none_found": int(torch.isinf(r).sum()),
        "curve": radius_curve(r, grid),
        "histogram": radius_histogram(r),
    }
    if len(r) <= store:
        out["radii"] = [_finite_or_none(float(f"{v:.6g}")) for v in r.tolist()]
    return out


def _finite_or_none(v: float) -> float | None:
    # JSON has no infinity: a radius that was never found is written null
    return v if math.isfinite(v) else None


def _round_up(v: float) -> float:
    """v rounded up to two significant digits: 0.2731 -> 0.28."""
    if v <= 0:
        return 0.0
    v = float(f"{v:.6g}")  # a float32 radius of 0.4 is 0.40000000596: still 0.4
    scale = 10 ** (math.floor(math.log10(v)) - 1)
    return round(math.ceil(round(v / scale, 9)) * scale, 12)
