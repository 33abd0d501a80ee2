"""The fast adaptive boundary attack, FAB (Croce and Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML 2020): a search for the adversarial example
of smallest norm, which needs no step size and no loss.

The algorithm, per example (section 3 of the paper), from x^(0) = x_orig or a random start:

    linearize the model at x^(i): the boundary to class j is approximately the hyperplane
        pi_j = {z : f_j(x^(i)) - f_y(x^(i)) + <grad(f_j - f_y)(x^(i)), z - x^(i)> = 0};
    take the closest one, s = argmin_j |f_j - f_y| / ||grad(f_j - f_y)||_q (q the dual norm:
        L1 for L-inf, L2 for L2), or the target's in the targeted version;
    project x^(i) and x_orig onto pi_s intersected with the data bounds: steps d and d_orig;
    x^(i+1) = clip((1 - a)(x^(i) + eta d) + a (x_orig + eta d_orig)),
        a = min(||d|| / (||d|| + ||d_orig||), alpha_max): mostly a step to the boundary, biased
        towards x_orig (more so when x_orig is close to it), overshooting it by eta;
    if x^(i+1) is adversarial, keep it when it is the closest to x_orig so far, and step back
        towards x_orig: x^(i+1) = x_orig + beta (x^(i+1) - x_orig).

Random restarts start on the sphere of radius min(best norm so far, start_radius) / 2 around
x_orig: near the best point found, never further than AutoAttack's eps / 2. FAB-T runs the targeted version
once per target class, the classes the model ranks highest after the true one at the clean input.
Success is misclassification in both versions: the target only chooses the boundary.

:func:`fab_minimal` is the attack itself: per example, the smallest adversarial point found and its
norm (a robust radius from above). :func:`fab` is its use inside an eps-ball, the attack signature
every toughen attack has.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toughen import threat
from toughen.attacks.pgd import _check_inputs
from toughen.errors import check_number
from toughen.logits import logits_of
from toughen.precision import autocast_for, check_amp, confirm_fooled, resolve_amp


def _norms(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def project_onto_hyperplane(t: torch.Tensor, w: torch.Tensor, c: torch.Tensor, bounds: threat.Bounds,
                            norm: str) -> torch.Tensor:
    """Per row, the smallest step d (in ``norm``) with <w, d> = c and t + d inside ``bounds``: the
    projection of t onto the hyperplane {z : <w, z> = <w, t> + c} intersected with the box. Where the
    box does not reach the hyperplane, the step to the box's corner closest to it.

    t, w: (B, D); c: (B,). Only coordinates moved in the direction of sign(c w) help, so the step is
    d_i = sign(c w_i) m_i with 0 <= m_i <= room_i (the distance to the bound on that side), and:

    - L-inf: m_i = min(mu, room_i), the same size everywhere a coordinate is free;
    - L2: m_i = min(mu |w_i|, room_i), the Lagrange solution cut off at the box (KKT).

    Both are m_i = min(mu s_i, room_i) (s_i = 1 or |w_i|), and <|w|, m> grows piecewise linearly in
    mu, with a kink where each coordinate hits its bound (mu = room_i / s_i). Sorting the kinks finds
    the linear piece on which <|w|, m> = |c| and mu in closed form: no iterative search.
    """
    lo, hi = bounds
    sign = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w, c = w * sign[:, None], c * sign  # now c >= 0: move along +w
    aw = w.abs()
    moves = w != 0
    room = torch.where(w > 0, hi - t, t - lo).clamp_min(0) * moves
    s = moves.to(w.dtype) if norm == "linf" else aw
    kink = torch.where(moves, room / s.clamp_min(torch.finfo(w.dtype).tiny), torch.inf)
    kink_s, order = kink.sort(dim=1)
    aw_s, s_s, room_s = aw.gather(1, order), s.gather(1, order), room.gather(1, order)
    saturated = (aw_s * room_s).cumsum(1)  # <|w|, m> from the coordinates at their bound, up to kink k
    free = (aw_s * s_s).flip(1).cumsum(1).flip(1)  # slope of <|w|, m> in mu, from kink k on
    free_after = torch.cat([free[:, 1:], torch.zeros_like(free[:, :1])], 1)
    reached = torch.where(torch.isfinite(kink_s), saturated + kink_s * free_after, saturated)
    k = (reached < c[:, None]).sum(1, keepdim=True)  # kinks passed before <|w|, m> reaches c
    feasible = k.squeeze(1) < w.shape[1]
    k = k.clamp(max=w.shape[1] - 1)
    before = torch.cat([torch.zeros_like(saturated[:, :1]), saturated[:, :-1]], 1).gather(1, k).squeeze(1)
    slope = free.gather(1, k).squeeze(1)
    mu = ((c - before) / slope.clamp_min(torch.finfo(w.dtype).tiny)).clamp_min(0)
    m = torch.minimum(mu[:, None] * s, room)
    m = torch.where(feasible[:, None], m, room)  # out of reach: as far towards it as the box allows
    return torch.where(moves, w.sign() * m, torch.zeros_like(m))


def _closest_boundary(model, xc, y, target, norm, amp):
    """At the inputs xc: per example the logit difference f = z_j - z_y and its gradient w for the
    class j whose linearized boundary is nearest in ``norm`` (untargeted), or for the target."""
    xg = xc.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast_for(xc, amp):
            z = logits_of(model, xg)
        z = z.float()
        z_y = z.gather(1, y[:, None]).squeeze(1)
        if target is not None:
            classes = target[:, None]
        else:  # every class but y, one column per "other" slot
            slots = torch.arange(z.shape[1] - 1, device=xc.device)
            classes = slots[None] + (slots[None] >= y[:, None]).long()
        best = torch.full((len(xc),), torch.inf, device=xc.device)
        f_best, w_best = torch.zeros_like(best), torch.zeros_like(xc)
        # One backward pass per other class (the paper's cost): the Jacobian of K - 1 differences.
        for j in range(classes.shape[1]):
            f = z.gather(1, classes[:, j:j + 1]).squeeze(1) - z_y
            (w,) = torch.autograd.grad(f.sum(), xg, retain_graph=j < classes.shape[1] - 1)
            dual = w.flatten(1).abs().sum(1) if norm == "linf" else w.flatten(1).norm(dim=1)
            dist = f.detach().abs() / (dual.float() + 1e-12)
            closer = dist < best
            best = torch.where(closer, dist, best)
            f_best = torch.where(closer, f.detach(), f_best)
            w_best[closer] = w[closer]
    return f_best.to(xc.dtype), w_best


def _random_start(x0, radius, norm, bounds, generator):
    """A point on the sphere of the given radius (one per example) around x0, clipped to the bounds."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    if norm == "linf":
        t = 2 * torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) - 1
    else:
        t = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    t = t / _norms(t, norm).clamp_min(1e-12).view(shape)
    return (x0 + radius.view(shape) * t).clamp(*bounds)


def _fab_run(model, x0, y, target, start, *, norm, steps, alpha_max, eta, beta, bounds, amp, stop_at):
    """One FAB run from ``start``. Returns (best_x, best_norm): per example the adversarial point
    closest to x0 that the run visited, and its norm (inf and x0 where it found none). With
    ``stop_at``, an example leaves the run once it has a point within that norm."""
    n, shape = len(x0), (-1,) + (1,) * (x0.dim() - 1)
    best_x, best_norm = x0.clone(), torch.full((n,), torch.inf, device=x0.device, dtype=x0.dtype)
    active, xc = torch.arange(n, device=x0.device), start.clone()
    for _ in range(steps):
        xo, ya = x0[active], y[active]
        ta = target[active] if target is not None else None
        f, w = _closest_boundary(model, xc, ya, ta, norm, amp)
        # The hyperplane {z : f + <w, z - xc> = 0}; project xc and x_orig onto it in one batch.
        w = w.flatten(1)
        c_cur, c_orig = -f, -f - (w * (xo - xc).flatten(1)).sum(1)
        d = project_onto_hyperplane(torch.cat([xc.flatten(1), xo.flatten(1)]), torch.cat([w, w]),
                                    torch.cat([c_cur, c_orig]), bounds, norm)
        d_cur, d_orig = d[:len(xc)].view_as(xc), d[len(xc):].view_as(xc)
        n_cur, n_orig = _norms(d_cur, norm).clamp_min(1e-8), _norms(d_orig, norm).clamp_min(1e-8)
        a = (n_cur / (n_cur + n_orig)).clamp(0, alpha_max).view(shape)
        xn = ((1 - a) * (xc + eta * d_cur) + a * (xo + eta * d_orig)).clamp(*bounds)

        with torch.no_grad(), autocast_for(xn, amp):
            fooled = logits_of(model, xn).argmax(1) != ya
        dist = _norms(xn - xo, norm)
        better = fooled & (dist < best_norm[active])
        if amp is not None:  # a new best counts only if it fools the model in full precision too
            better = confirm_fooled(model, xn, ya, None, better)
        best_x[active[better]] = xn[better]
        best_norm[active[better]] = dist[better]
        # Past the boundary: step back towards x_orig, to approach the boundary from closer in.
        xc = torch.where(fooled.view(shape), xo + beta * (xn - xo), xn)
        if stop_at is not None:
            keep = best_norm[active] > stop_at
            active, xc = active[keep], xc[keep]
            if len(active) == 0:
                break
    return best_x, best_norm


def _check_options(steps, restarts, targeted, n_target_classes, alpha_max, eta, beta, amp):
    check_number("steps", steps, low=1, whole=True)
    check_number("restarts", restarts, low=1, whole=True)
    if targeted:
        check_number("n_target_classes", n_target_classes, low=1, whole=True)
    check_number("alpha_max", alpha_max, low=0, high=1)
    check_number("eta", eta, low=0, above=True)
    check_number("beta", beta, low=0, high=1, above=True)
    check_amp(amp)


def fab_minimal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    bounds: threat.Bounds = (0.0, 1.0),
    steps: int = 100,
    restarts: int = 1,
    targeted: bool = False,
    n_target_classes: int = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    start_radius: float | None = None,
    stop_at: float | None = None,
    amp: str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FAB's minimal-norm search (Croce and Hein 2020): per example, the adversarial input closest
    to x that it finds, and its distance, an upper bound on the example's robust radius.

    Args:
        model: maps inputs in ``bounds`` to logits. Its train/eval mode is left as it is.
        x: inputs ``(N, ...)`` inside ``bounds``; the results have their device and dtype.
        y: int64 labels ``(N,)``.
        norm: "linf" or "l2", the norm minimized.
        steps: iterations per run; each costs a forward pass and one backward pass per class other
            than y (one in the targeted version), plus a forward pass at the new point.
        restarts: runs per target; the first starts at x, the others on the sphere of radius
            min(best norm found so far, start_radius) / 2 around x.
        targeted: FAB-T: one run (times ``restarts``) for each of the ``n_target_classes`` classes the
            model ranks highest after y at the clean input, towards that class's boundary only.
        alpha_max, eta, beta: the paper's bias towards x (at most), overshoot and backward step.
        start_radius: the largest radius of a random start; the size of the box in ``norm`` when
            None ((hi - lo), or (hi - lo) sqrt(D) for L2), so it only matters for examples with no
            adversarial point found yet.
        stop_at: an example leaves the search once it has a point within this norm (what
            :func:`fab` does with eps): its radius is then that point's norm, not the minimum.
        amp: "bf16", "fp16" or "auto": passes under autocast; a point counts as adversarial only
            after a check in full precision (toughen.precision.confirm_fooled).
        generator: randomness for the random restarts; the global generator when None.

    Returns:
        ``(x_adv, radius)``: x_adv detached inside ``bounds``, per example the closest adversarial
        point found (x where none); radius its ``norm`` distance to x, 0 where x itself is
        misclassified, inf where nothing was found.

    Example:
        >>> x_adv, radius = fab_minimal(model, x, y, norm="l2")
        >>> robust_at = lambda eps: (radius > eps).float().mean()  # accuracy up to FAB's strength
    """
    _check_inputs(x, y, None, bounds)
    threat.check_norm(norm)
    _check_options(steps, restarts, targeted, n_target_classes, alpha_max, eta, beta, amp)
    check_number("start_radius", start_radius, low=0, above=True, optional=True)
    check_number("stop_at", stop_at, low=0, optional=True)
    x = x.detach()
    best_x = x.clone()
    radius = torch.full((len(x),), torch.inf, device=x.device, dtype=x.dtype)
    if len(x) == 0:
        return best_x, radius
    amp = resolve_amp(model, x, y, amp)
    if start_radius is None:
        width = bounds[1] - bounds[0]
        start_radius = width if norm == "linf" else width * math.sqrt(x[0].numel())
    with torch.no_grad():
        logits = logits_of(model, x)
    radius[logits.argmax(1) != y] = 0  # already wrong: x is its own adversarial example
    if targeted:
        ranked = logits.float().scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        targets = [ranked[:, j] for j in range(min(n_target_classes, logits.shape[1] - 1))]
    else:
        targets = [None]
    done_at = 0.0 if stop_at is None else stop_at
    for t_all in targets:
        for r in range(restarts):
            todo = (radius > done_at).nonzero().squeeze(1)
            if len(todo) == 0:
                return best_x, radius
            x0 = x[todo]
            if r == 0:
                start = x0
            else:
                start = _random_start(x0, radius[todo].clamp(max=start_radius) / 2, norm, bounds, generator)
            bx, bn = _fab_run(model, x0, y[todo], t_all[todo] if t_all is not None else None, start, norm=norm,
                              steps=int(steps), alpha_max=alpha_max, eta=eta, beta=beta, bounds=bounds, amp=amp,
                              stop_at=stop_at)
            better = bn < radius[todo]
            best_x[todo[better]] = bx[better]
            radius[todo[better]] = bn[better]
    return best_x, radius


def fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    bounds: threat.Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    steps: int = 100,
    restarts: int = 1,
    targeted: bool = False,
    n_target_classes: int = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    amp: str | None = None,
) -> torch.Tensor:
    """FAB (Croce and Hein 2020) inside an eps-ball: :func:`fab_minimal` with each example leaving
    the search once it has an adversarial point within eps, and random restarts at radius eps / 2,
    as in AutoAttack. ``targeted=True`` with ``n_target_classes=9`` is AutoAttack's FAB-T.

    Args: as :func:`fab_minimal`, with ``eps`` the radius of the L-inf or L2 ball in data units.

    Returns:
        ``x_adv`` detached, inside the eps-ball and ``bounds``: per example an input that fools the
        model if FAB found one within eps, else x itself. FAB minimizes a norm, not a loss, so its
        nearest point outside the ball says nothing about the worst case inside it (projected into
        the ball it can have a lower loss than x). x is the honest answer: the worst case per
        example never gets better than the clean input, and it costs no extra forward pass.

    Example:
        >>> x_adv = fab(model, x, y, eps=0.3)                                     # FAB
        >>> x_adv = fab(model, x, y, eps=8 / 255, targeted=True, n_target_classes=9)  # FAB-T
    """
    _check_inputs(x, y, None, bounds)
    threat.check_eps(eps, norm, bounds)
    _check_options(steps, restarts, targeted, n_target_classes, alpha_max, eta, beta, amp)
    x = x.detach()
    if len(x) == 0 or eps == 0:  # nothing to search: no input but x lies in the ball
        return x.clone()
    x_min, radius = fab_minimal(model, x, y, norm=norm, bounds=bounds, steps=steps, restarts=restarts,
                                targeted=targeted, n_target_classes=n_target_classes, alpha_max=alpha_max, eta=eta,
                                beta=beta, start_radius=eps, stop_at=eps, amp=amp, generator=generator)
    return torch.where(threat.per_example(radius <= eps, x), x_min, x)
