"""Auto-PGD (Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks"): PGD with momentum and a step size that adapts per example,
so no step size has to be tuned and a fixed budget is spent well.

The algorithm, per example (section 3 of the paper):

    x1 = P(x0 + eta * d(x0));  x_{k+1} = P(x_k + a (z_{k+1} - x_k) + (1 - a)(x_k - x_{k-1})),
    z_{k+1} = P(x_k + eta * d(x_k)),  a = 0.75,  eta starts at 2 eps,

where d is sign(grad) for L-inf and grad / ||grad||_2 for L2 and P projects onto the ball and
the data bounds. At the checkpoints w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), eta is halved (and the iterate restarts from the
best point found) when fewer than rho = 75% of the steps since the last checkpoint raised the
loss, or when eta was not halved at the last checkpoint and the best loss has not improved since.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toughen import threat
from toughen.attacks.eot import check_eot, eot_grad, eot_logits, eot_value
from toughen.attacks.losses import loss_value
from toughen.attacks.pgd import _check_inputs, _settle
from toughen.attacks.trace import active
from toughen.errors import ToughenUsageError
from toughen.precision import confirm_fooled

APGD_LOSSES = ("ce", "dlr")  # the two of AutoAttack


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps) at which APGD may halve its step size."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round() first: 0.22 + 0.19 is 0.41000000000000003 in floating point, whose ceil would be off by one
    marks = sorted({math.ceil(round(q * steps, 6)) for q in p[1:] if math.ceil(round(q * steps, 6)) < steps})
    return [w for w in marks if w > 0]


def _apgd_run(model, x, y, target, *, eps, norm, steps, rho, loss, bounds, generator, amp, eot):
    """One APGD run on a batch. Returns (x_out, fooled): per example the first input that fooled
    the model, else the input of highest loss. Fooled examples leave the batch at once: their
    answer is fixed and attacking them further only costs time.

    Under EOT (``eot`` > 1) losses and gradients are averages over the passes, an input fools only
    if it does in every pass, and an example not fooled returns the input that fooled the most
    passes (then of highest loss), or the input of highest loss if none fooled any."""
    n = len(x)
    shape = (-1,) + (1,) * (x.dim() - 1)
    out, fooled = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)

    # Random start on the sphere of the ball (the paper's choice: a large first perturbation).
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(shape)
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        t = t / t.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
    delta = threat.clamp_to_bounds(x, eps * t, bounds)

    def value_and_grad(xs, ys, ts, d):
        # EOT (eot > 1): the loss that steers the step size and the best point, and its gradient,
        # are averages over the passes; hits is the fraction of passes wrong, "wrong" all of them.
        value, g, hits = eot_grad(model, xs, d, lambda lg: loss_value(loss, lg, ys, ts), lambda lg: lg.argmax(1) != ys,
                                  eot=eot, amp=amp)
        wrong = hits == 1
        if amp is not None:  # fooled only if fooled in full precision too
            wrong = confirm_fooled(model, (xs + d).detach(), ys, None, wrong)
            hits = torch.where(wrong, hits, hits.clamp(max=1 - 1 / eot))
        return value, g, wrong, hits

    trace = active()  # the indicators of attack failure read each step; None almost always
    marks = set(checkpoints(steps))
    s = {  # per-example state, compacted together as examples get fooled
        "idx": torch.arange(n, device=x.device), "x": x, "y": y, "t": target, "delta": delta,
        "prev": delta.clone(), "eta": torch.full((n,), 2 * eps, device=x.device, dtype=x.dtype),
    }
    value, grad, wrong, hits = value_and_grad(x, y, target, delta)
    if trace is not None:
        trace.step(s["idx"], value, wrong)
    s.update(grad=grad, value=value, best=value.clone(), best_delta=delta.clone(), best_grad=grad.clone(),
             best_at_check=value.clone(), halved_at_check=torch.ones(n, dtype=torch.bool, device=x.device),
             n_up=torch.zeros(n, device=x.device))
    if eot > 1:  # the input that fooled the most passes so far, then the highest loss
        s.update(most=hits, most_value=value.clone(), most_delta=delta.clone())
    last_mark = 0
    for i in range(1, steps):
        if wrong.any():  # record the fooling inputs and drop those examples
            out[s["idx"][wrong]] = (s["x"] + s["delta"])[wrong]
            fooled[s["idx"][wrong]] = True
            keep = ~wrong
            s = {k: (v[keep] if v is not None else None) for k, v in s.items()}
            wrong = wrong[keep]
            if len(s["idx"]) == 0:
                break
        eta = s["eta"].view(shape)
        d, xs = s["delta"], s["x"]
        z = threat.clamp_to_bounds(xs, threat.project(d + eta * threat.ascent_direction(s["grad"], norm), eps, norm),
                                   bounds)
        a = 0.75 if i > 1 else 1.0  # the first step has no momentum
        new = d + a * (z - d) + (1 - a) * (d - s["prev"])
        new = threat.clamp_to_bounds(xs, threat.project(new, eps, norm), bounds)
        s["prev"] = d
        value, grad, wrong, hits = value_and_grad(xs, s["y"], s["t"], new)
        if trace is not None:
            trace.step(s["idx"], value, wrong)
        s["n_up"] += (value > s["value"]).float()
        s["delta"], s["value"], s["grad"] = new, value, grad
        better = value > s["best"]
        s["best"] = torch.where(better, value, s["best"])
        s["best_delta"][better] = new[better]
        s["best_grad"][better] = grad[better]
        if eot > 1:
            more = (hits > s["most"]) | ((hits == s["most"]) & (value > s["most_value"]))
            s["most"], s["most_value"] = torch.where(more, hits, s["most"]), torch.where(more, value, s["most_value"])
            s["most_delta"][more] = new[more]

        if i in marks:
            span = i - last_mark
            too_few_up = s["n_up"] < rho * span
            stalled = ~s["halved_at_check"] & (s["best"] <= s["best_at_check"])
            halve = too_few_up | stalled
            s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
            # Restart the halved ones from their best point, with its gradient, and no momentum.
            s["delta"][halve] = s["best_delta"][halve]
            s["grad"][halve] = s["best_grad"][halve]
            s["prev"] = torch.where(halve.view(shape), s["delta"], s["prev"])
            s["halved_at_check"], s["best_at_check"] = halve, s["best"].clone()
            s["n_up"].zero_()
            last_mark = i
    if wrong.any():
        out[s["idx"][wrong]] = (s["x"] + s["delta"])[wrong]
        fooled[s["idx"][wrong]] = True
    rest = ~wrong
    best = s["best_delta"] if eot == 1 else torch.where((s["most"] > 0).view(shape), s["most_delta"], s["best_delta"])
    out[s["idx"][rest]] = (s["x"] + best)[rest]
    return out, fooled


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    loss: str = "ce",
    n_target_classes: int = 0,
    rho: float = 0.75,
    bounds: threat.Bounds = (0.0, 1.0),
    amp: str | None = None,
    eot: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """APGD (Croce and Hein 2020), untargeted or targeted at the top-k other classes.

    Args:
        model: maps inputs in ``bounds`` to logits. Its train/eval mode is left as it is.
        x: inputs ``(N, ...)`` inside ``bounds``; the result has their device and dtype.
        y: int64 labels ``(N,)``.
        eps: radius of the L-inf or L2 ball, in data units.
        steps: forward-backward passes per run (the paper's N_iter; 100 in AutoAttack).
        restarts: runs from fresh random starts; each runs only on the examples not yet fooled.
        loss: "ce" (cross-entropy) or "dlr" (difference of logits ratio, scale invariant).
        n_target_classes: 0 for the untargeted attack. k > 0 runs the targeted attack once per
            each of the k classes the model ranks highest after the true one (at the clean input),
            each run on the examples still not fooled: AutoAttack's APGD-T (k = 9, loss "dlr").
            Success is still misclassification: the target only steers the search.
        rho: the fraction of loss-raising steps below which the step size is halved.
        amp: "bf16", "fp16" or "auto" (the faster of fp32 and bf16 here, measured): forward and backward passes under autocast (about 2x faster where
            supported); an example counts as fooled only after a check in full precision
            (toughen.precision.confirm_fooled), so robust accuracy is never understated by rounding.
        eot: for a randomized model, expectation over transformation (:mod:`toughen.attacks.eot`):
            the gradient, and the loss value behind the step-size decisions and the best point, are
            averaged over ``eot`` forward/backward passes; an example counts as fooled only if it is
            in every pass. AutoAttack's ``rand`` version runs APGD-CE and APGD-DLR with 20.
        generator: randomness for the random starts; the global generator when None.

    Returns:
        ``x_adv`` detached, inside the eps-ball and ``bounds``: per example an input that fools the
        model if one was found, else the one of highest loss.

    Example:
        >>> x_adv = apgd(model, x, y, eps=8 / 255)                                  # APGD-CE
        >>> x_adv = apgd(model, x, y, eps=8 / 255, loss="dlr", n_target_classes=9)  # APGD-T
    """
    _check_inputs(x, y, None, bounds)
    threat.check_eps(eps, norm, bounds)
    if int(steps) != steps or steps < 1:
        raise ToughenUsageError(f"steps must be a whole number >= 1, got {steps}")
    if not 0 < rho <= 1:
        raise ToughenUsageError(f"rho must be in (0, 1], got {rho}")
    if n_target_classes < 0:
        raise ToughenUsageError(f"n_target_classes must be >= 0, got {n_target_classes}")
    amp = _settle(model, x, y, restarts=restarts, loss=loss, losses=APGD_LOSSES, attack="APGD", amp=amp)
    eot = check_eot(eot)
    x = x.detach()
    out = x.clone()
    draws = eot_logits(model, x, eot=eot)
    logits = draws[0] if eot == 1 else torch.stack(draws).float().mean(0)
    # already wrong (in every pass): the clean input is its own adversarial example
    fooled = torch.stack([d.argmax(1) != y for d in draws]).all(0)
    if n_target_classes:
        ranked = logits.float().scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        n_target_classes = min(n_target_classes, logits.shape[1] - 1)
        targets = [ranked[:, j] for j in range(n_target_classes)]
    else:
        targets = [None]
    best_value = torch.full((len(x),), float("-inf"), device=x.device)
    trace = active()  # each run is one of the trace's runs, over the rows it attacks
    best_hits = torch.zeros(len(x), device=x.device)  # under EOT: the fraction of passes that out fools
    for t_all in targets:
        for _ in range(restarts):
            todo = (~fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                return out
            t = t_all[todo] if t_all is not None else None
            if trace is not None:
                trace.run(todo)
            x_run, f_run = _apgd_run(model, x[todo], y[todo], t, eps=eps, norm=norm, steps=int(steps), rho=rho,
                                     loss=loss, bounds=bounds, generator=generator, amp=amp, eot=eot)
            # Among runs that did not fool, keep the input of highest untargeted loss (under EOT:
            # that fools the most passes, then of highest loss).
            v, h = eot_value(model, x_run, lambda lg: loss_value(loss, lg, y[todo], None),
                             (lambda lg: lg.argmax(1) != y[todo]) if eot > 1 else None, eot=eot, amp=None)
            v = v.float()
            if eot == 1:
                take = f_run | (v > best_value[todo])
            else:
                take = f_run | (h > best_hits[todo]) | ((h == best_hits[todo]) & (v > best_value[todo]))
                best_hits[todo[take]] = h[take]
            best_value[todo[take]] = v[take]
            out[todo[take]] = x_run[take]
            fooled[todo[f_run]] = True
    return out
