"""The Square attack (Andriushchenko, Croce, Flammarion and Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search").

A score-based black-box attack: it only reads the model's logits, never a gradient, so it is
not fooled by masked, shattered or saturated gradients. That is why an evaluation suite needs
it: when Square finds adversarial examples that gradient attacks missed, the gradients lie.

Random search over the vertices of the ball. Each iteration changes one random square window of
side s (in every channel) and keeps the change when the margin loss max_{i != y} z_i - z_y rises.
The window's share p of the image shrinks on a fixed schedule as queries are spent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toughen import threat
from toughen.attacks.losses import loss_value, margin
from toughen.attacks.pgd import _check_inputs, _settle
from toughen.errors import ToughenUsageError
from toughen.logits import logits_of
from toughen.precision import autocast_for, confirm_fooled

SQUARE_LOSSES = ("margin", "ce")


def p_schedule(p_init: float, it: int, n_queries: int) -> float:
    """The fraction of pixels changed at query ``it``: the paper's schedule for 10,000 queries,
    halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, rescaled to
    ``n_queries`` so a smaller budget walks the same schedule."""
    it = int(it / n_queries * 10000)
    halvings = sum(it > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, amp: str | None):
    """(fooled, value) for each input: the random search minimizes value, minus the attack loss
    (:mod:`toughen.attacks.losses`); fooled is checked in full precision when amp is on."""
    with autocast_for(x, amp):
        logits = logits_of(model, x).float()
    fooled = margin(logits, y) > 0
    if amp is not None:
        fooled = confirm_fooled(model, x, y, None, fooled)
    return fooled, -loss_value(loss, logits, y, None)


def _rand_sign(shape, like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1


def _randint(high: int, generator, device) -> int:
    return int(torch.randint(0, high, (1,), generator=generator, device=device).item())


def _eta(s: int, like: torch.Tensor, generator) -> torch.Tensor:
    """The paper's L2 building block: an s x s window whose two halves hold opposite-signed
    concentric squares of weights 1/(r + 1)^2 (mass concentrated in the middle), unit L2 norm,
    randomly transposed."""
    def rings(h: int, w: int) -> torch.Tensor:
        block = torch.zeros(h, w, device=like.device, dtype=like.dtype)
        ch, cw = h // 2, w // 2
        for r in range(max(ch, cw) + 1):
            block[max(ch - r, 0):min(ch + r + 1, h), max(cw - r, 0):min(cw + r + 1, w)] += 1.0 / (r + 1) ** 2
        return block / block.norm().clamp_min(1e-12)

    top = s // 2
    block = torch.cat([rings(top, s), -rings(s - top, s)], dim=0) if top > 0 else rings(s, s)
    block = block / block.norm().clamp_min(1e-12)
    if _randint(2, generator, like.device):
        block = block.t()
    return block


def _l2_init(x: torch.Tensor, eps: float, generator) -> torch.Tensor:
    """A perturbation of L2 norm eps made of a grid of eta blocks with random signs."""
    n, c, h, w = x.shape
    s = max(h // 5, 1)
    delta = torch.zeros_like(x)
    off_h, off_w = (h - s * (h // s)) // 2, (w - s * (w // s)) // 2
    for i in range(h // s):
        for j in range(w // s):
            r, q = off_h + i * s, off_w + j * s
            delta[:, :, r:r + s, q:q + s] = _eta(s, x, generator) * _rand_sign((n, c, 1, 1), x, generator)
    return delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    n_queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    loss: str = "margin",
    bounds: threat.Bounds = (0.0, 1.0),
    amp: str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Square attack, L-inf or L2, with at most ``n_queries`` model evaluations per example and run.

    Args:
        model: maps inputs ``(N, C, H, W)`` in ``bounds`` to logits; only its outputs are used.
        x, y: images inside ``bounds`` and int64 labels. The result has x's device and dtype.
        eps: radius of the ball in data units.
        n_queries: the query budget per example per run (5,000 in AutoAttack's standard version).
        p_init: the initial fraction of pixels a window covers (0.8 for L-inf in AutoAttack).
        restarts: independent runs, each on the examples not yet fooled.
        loss: "margin" (default) or "ce": the loss each accepted change must raise.
        amp: "bf16", "fp16" or "auto" (the faster of fp32 and bf16 here, measured): queries run under autocast; an input counts as fooling only
            after a check in full precision (toughen.precision.confirm_fooled).
        generator: randomness for the initialization, windows and signs.

    Returns:
        ``x_adv`` inside the ball and ``bounds``: per example the first input that fooled the
        model, else the one of lowest loss found (never worse than the clean input).

    Example:
        >>> x_adv = square(model, x, y, eps=8 / 255, n_queries=1000)
    """
    _check_inputs(x, y, None, bounds)
    threat.check_eps(eps, norm, bounds)
    if x.dim() != 4:
        raise ToughenUsageError(f"square needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
    if int(n_queries) != n_queries or n_queries < 1:
        raise ToughenUsageError(f"n_queries must be a whole number >= 1, got {n_queries}")
    if not 0 < p_init <= 1:
        raise ToughenUsageError(f"p_init must be in (0, 1], got {p_init}")
    amp = _settle(model, x, y, restarts=restarts, loss=loss, losses=SQUARE_LOSSES, attack="square", amp=amp)

    x = x.detach()
    lo, hi = bounds
    with torch.no_grad():
        # The clean input is the first candidate: already-wrong examples need no queries, and the
        # result is never worse than x.
        fooled, value = _score(model, x, y, loss, None)  # the clean input: in full precision
        best_x, best_value = x.clone(), value
        for _ in range(restarts):
            todo = (~fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            run = _square_run if norm == "linf" else _square_run_l2
            rx, rv, rf = run(model, x[todo], y[todo], eps, int(n_queries), p_init, loss, (lo, hi), generator, amp)
            take = rf | (rv < best_value[todo])
            best_x[todo[take]] = rx[take]
            best_value[todo[take]] = rv[take]
            fooled[todo[rf]] = True
    return best_x


def _square_run(model, x, y, eps, n_queries, p_init, loss, bounds, generator, amp):
    """One L-inf run. Returns (x_best, value_best, fooled) for the batch."""
    n, c, h, w = x.shape
    lo, hi = bounds
    # Start at a vertex: vertical stripes of +-eps (one sign per column and channel).
    best = (x + eps * _rand_sign((n, c, 1, w), x, generator)).clamp(lo, hi)
    fooled, value = _score(model, best, y, loss, amp)
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    for it in range(n_queries - 1):
        todo = (~fooled).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        xs, cur = x[todo], best[todo]
        p = p_schedule(p_init, it, n_queries)
        s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
        # Per example a random window; per example and channel a random vertex value on it.
        vh = torch.randint(0, h - s + 1, (len(todo), 1, 1, 1), generator=generator, device=x.device)
        vw = torch.randint(0, w - s + 1, (len(todo), 1, 1, 1), generator=generator, device=x.device)
        window = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
        sign = _rand_sign((len(todo), c, 1, 1), x, generator)
        cand = torch.where(window, (xs + eps * sign).clamp(lo, hi), cur)
        _accept(model, cand, y, todo, loss, best, value, fooled, amp)
    return best, value, fooled


def _accept(model, cand, y, todo, loss, best, value, fooled, amp) -> None:
    """Score the candidates for the examples ``todo``; keep (in place) each one that lowers the
    objective or fools the model."""
    f, v = _score(model, cand, y[todo], loss, amp)
    improved = (v < value[todo]) | f
    best[todo[improved]] = cand[improved]
    value[todo[improved]] = v[improved]
    fooled[todo[f]] = True


def _square_run_l2(model, x, y, eps, n_queries, p_init, loss, bounds, generator, amp):
    """One L2 run (Algorithm 3 of the paper): each step moves the perturbation's mass from two
    windows into one of them, redrawn as a random eta block; the total norm stays eps."""
    n, c, h, w = x.shape
    lo, hi = bounds
    best = (x + _l2_init(x, eps, generator)).clamp(lo, hi)
    fooled, value = _score(model, best, y, loss, amp)
    for it in range(n_queries - 1):
        todo = (~fooled).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        xs = x[todo]
        delta = best[todo] - xs
        p = p_schedule(p_init, it, n_queries)
        s = max(int(round(math.sqrt(p * h * w))), 3)
        s = min(s + (s % 2 == 0), h, w)  # odd sides center the eta block
        # One pair of windows per iteration, shared by the batch as in the paper.
        r1, q1 = _randint(h - s + 1, generator, x.device), _randint(w - s + 1, generator, x.device)
        r2, q2 = _randint(h - s + 1, generator, x.device), _randint(w - s + 1, generator, x.device)
        w1 = (slice(None), slice(None), slice(r1, r1 + s), slice(q1, q1 + s))
        w2 = (slice(None), slice(None), slice(r2, r2 + s), slice(q2, q2 + s))
        both = torch.zeros_like(delta)
        both[w1], both[w2] = 1, 1
        mass = (delta * both).pow(2).sum(dim=(2, 3), keepdim=True)  # per channel, in the two windows
        room = (eps**2 - delta.flatten(1).pow(2).sum(1)).clamp_min(0).view(-1, 1, 1, 1) / c
        old = delta[w1] / delta[w1].pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        new = _eta(s, x, generator) * _rand_sign((len(todo), c, 1, 1), x, generator) + old
        new = new / new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12) * (mass + room).sqrt()
        cand_delta = delta.clone()
        cand_delta[w2] = 0
        cand_delta[w1] = new
        cand_delta = cand_delta * (eps / cand_delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
        cand = (xs + cand_delta).clamp(lo, hi)
        _accept(model, cand, y, todo, loss, best, value, fooled, amp)
    return best, value, fooled
