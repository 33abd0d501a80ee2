"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn

from toughen import threat
from toughen.attacks.eot import check_eot, eot_grad, eot_value
from toughen.attacks.losses import LOSSES, check_loss, is_successful, objective
from toughen.attacks.trace import active
from toughen.errors import ToughenUsageError, check_number
from toughen.precision import check_amp, confirm_fooled, resolve_amp


class _WorstCase:
    """Per example, the worst input seen so far: successful beats unsuccessful, then higher loss.
    Under EOT "successful" is graded: more of the passes fooled beats fewer (``hits``, the fraction
    of them; 0 or 1 for one pass), and only all of them is a success."""

    def __init__(self, x: torch.Tensor):
        self.x = x.detach().clone()
        self.success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.hits = torch.zeros(len(x), device=x.device)
        self.value = torch.full((len(x),), float("-inf"), device=x.device)

    def update(self, idx: torch.Tensor, x_new: torch.Tensor, hits: torch.Tensor, value: torch.Tensor) -> None:
        """Offer candidates ``x_new`` for the examples ``idx``; keep each one that is worse."""
        value = value.detach().float()
        old_hits, old_value = self.hits[idx], self.value[idx]
        better = (hits > old_hits) | ((hits == old_hits) & (value > old_value))
        chosen = idx[better]
        self.x[chosen] = x_new.detach()[better]
        self.hits[chosen] = hits[better]
        self.success[chosen] = hits[better] == 1
        self.value[chosen] = value[better]


def _check_inputs(x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                  bounds: threat.Bounds = (0.0, 1.0)) -> None:
    if not x.is_floating_point():
        raise ToughenUsageError(f"x must be a floating-point tensor in the data bounds, got {x.dtype}")
    if len(x) and not (x.min() >= bounds[0] and x.max() <= bounds[1]):  # NaN fails both
        raise ToughenUsageError(
            f"x must lie inside the data bounds [{bounds[0]:g}, {bounds[1]:g}], but spans [{x.min().item():g}, "
            f"{x.max().item():g}]: pass raw inputs (normalization belongs inside the model) or set bounds="
        )
    if y.dim() != 1 or len(y) != len(x):
        raise ToughenUsageError(f"y must hold one label per input: x has {len(x)} rows, y has shape {tuple(y.shape)}")
    if target is not None and target.shape != y.shape:
        raise ToughenUsageError(f"target must have the shape of y {tuple(y.shape)}, got {tuple(target.shape)}")


def _settle(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, restarts: int, loss: str,
            losses: tuple[str, ...], attack: str, amp: str | None) -> str | None:
    """The checks every attack makes of its restarts, loss and amp, then the amp it runs with
    ("auto": the faster of fp32 and bf16 here, timed on x)."""
    if restarts < 1:
        raise ToughenUsageError(f"restarts must be >= 1, got {restarts}")
    check_loss(loss, losses, attack)
    check_amp(amp)
    return resolve_amp(model, x, y, amp)


def _offer(worst: _WorstCase, model: nn.Module, idx: torch.Tensor, x_new: torch.Tensor, y: torch.Tensor,
           target: torch.Tensor | None, hits: torch.Tensor, value: torch.Tensor, amp: str | None,
           eot: int = 1) -> torch.Tensor:
    """Offer the iterate ``x_new`` (rows ``idx`` of the batch) to ``worst``, with the fraction of
    its ``eot`` passes that it fooled (``hits``); return who it fools (in all of them).

    Under amp, low-precision logits can be wrong near the decision boundary, so a fooling input
    only counts after a full-precision check. To keep that check cheap it runs only for examples
    not yet fooled: an example already fooled keeps its confirmed input.
    """
    success = hits == 1
    if amp is None:
        worst.update(idx, x_new, hits, value)
        return success
    open_ = ~worst.success[idx]
    success = confirm_fooled(model, x_new, y, target, success & open_)
    # a success the check refuses counts as one pass short of all (none, for one pass)
    hits = torch.where(success, torch.ones_like(hits), hits.clamp(max=1 - 1 / eot))
    worst.update(idx[open_], x_new[open_], hits[open_], value[open_])
    return success


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    target: torch.Tensor | None = None,
    bounds: threat.Bounds = (0.0, 1.0),
    keep_best: bool = True,
    early_stop: bool = False,
    amp: str | None = None,
    eot: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the loss inside an eps-ball (Madry et al. 2018,
    "Towards Deep Learning Models Resistant to Adversarial Attacks").

    x_{t+1} = Proj_{||delta|| <= eps, x + delta in bounds}(x_t + step_size * d_t), where d_t is
    sign(grad) for L-inf and grad / ||grad||_2 for L2.

    Args:
        model: maps inputs in ``bounds`` to logits. Its train/eval mode is left as it is: in
            train mode its BatchNorm layers normalize with batch statistics and update their
            running statistics on every forward pass of the attack (what PGD training does);
            call ``model.eval()`` first to attack the model as deployed and leave it unchanged.
        x: inputs, any shape ``(N, ...)``, inside ``bounds``. The result has its device and dtype.
        y: int64 labels, shape ``(N,)``.
        eps: radius of the threat model, in the units of x (e.g. 8/255 or 0.3 for [0, 1] data).
        steps: gradient steps per restart. step_size defaults to 2.5 * eps / steps.
        restarts: independent random starts; per example the worst result is kept
            (misclassified first, then highest loss).
        loss: "ce" (cross-entropy), "margin" (max_{j != y} z_j - z_y) or "dlr"
            (:mod:`toughen.attacks.losses`).
        target: optional target labels; the attack then drives the prediction towards them.
        keep_best: return, per example, the worst iterate seen (default) rather than the last one:
            one that fools the model first, then the highest loss. (The last iterate is looked at
            only for the examples that no earlier one fooled.)
        early_stop: stop attacking an example as soon as it is fooled (its fooling input is
            returned). Robust accuracy is unchanged and evaluation is much cheaper; the loss of
            fooled examples is then not pushed higher.
        amp: "bf16" or "fp16" runs the forward and backward passes under autocast (about 2x faster
            on CPUs with AMX and on GPUs), "auto" whichever of fp32 and bf16 a short probe finds
            faster for this model here (:func:`toughen.precision.choose_precision`). The
            perturbation stays in x's dtype, and
            an example is only counted as fooled (for early_stop and the final choice) after a
            check in full precision. Once confirmed, its fooling input is kept (not replaced by
            later, higher-loss iterates), so the check runs once per example, not every step.
        eot: for a randomized model, expectation over transformation (:mod:`toughen.attacks.eot`):
            each step's gradient, and the loss that picks the worst iterate, are averaged over
            ``eot`` forward/backward passes; an iterate fools an example only if it does in every
            pass, and of the others the one that fools the most passes (then the highest mean loss)
            is kept. 1 (default) is one plain pass.
        generator: the source of randomness for the random start; the global one when None.

    Returns:
        x_adv with ``||x_adv - x|| <= eps`` and ``x_adv`` inside ``bounds``, detached.

    Example:
        >>> x_adv = pgd(model, x, y, eps=8 / 255, steps=10)
    """
    _check_inputs(x, y, target, bounds)
    threat.check_eps(eps, norm, bounds)
    if steps < 0 or int(steps) != steps:
        raise ToughenUsageError(f"steps must be a whole number >= 0, got {steps}")
    amp = _settle(model, x, y, restarts=restarts, loss=loss, losses=LOSSES, attack="PGD", amp=amp)
    eot = check_eot(eot)
    if step_size is None:
        step_size = threat.default_step_size(eps, steps)
    check_number("step_size", step_size, low=0)

    x = x.detach()
    if len(x) == 0:  # nothing to attack (e.g. every example already fooled upstream)
        return x.clone()
    track = keep_best or early_stop or restarts > 1
    worst = _WorstCase(x)
    everyone = torch.arange(len(x), device=x.device)
    trace = active()  # the indicators of attack failure read each step; None almost always
    for _ in range(restarts):
        # With early_stop, examples already fooled are not attacked again.
        idx = everyone[~worst.success] if early_stop else everyone
        if trace is not None:
            trace.run(everyone)
        xs, ys = x[idx], y[idx]
        ts = target[idx] if target is not None else None
        value_of = objective(loss, ys, ts)
        if random_start:
            delta = threat.random_start(xs, eps, norm, bounds, generator)
        else:
            delta = torch.zeros_like(xs)
        for _ in range(steps):
            # Gradient with respect to delta only (averaged over eot passes): nothing accumulates on the parameters.
            value, grad, hits = eot_grad(model, xs, delta, value_of, lambda lg: is_successful(lg, ys, ts), eot=eot,
                                         amp=amp)
            if track:
                success = _offer(worst, model, idx, xs + delta, ys, ts, hits, value, amp, eot)
            else:
                success = hits == 1
            if trace is not None:
                trace.step(idx, value, success)
            delta = threat.step(xs, delta, grad, step_size, eps, norm, bounds)
            if early_stop and success.any():
                keep = ~success
                idx, xs, ys, delta = idx[keep], xs[keep], ys[keep], delta[keep]
                ts = ts[keep] if ts is not None else None
                value_of = objective(loss, ys, ts)
                if len(idx) == 0:
                    break
        if len(idx) == 0:
            continue
        if not track:  # one run, last iterate: Madry's training attack, no extra forward pass
            return (xs + delta).detach()
        # The last iterate is a candidate too, but only for examples not fooled yet: a fooled
        # example keeps its fooling input, and the forward pass shrinks to the ones still robust
        # (on a model PGD breaks, most of it is saved). Not in train mode, where BatchNorm's batch
        # statistics would come from another batch than the steps' (or fail on a batch of one).
        open_ = ~worst.success[idx] if not model.training else torch.ones_like(worst.success[idx])
        if open_.any():
            x_last, y_last = (xs + delta)[open_], ys[open_]
            t_last = ts[open_] if ts is not None else None
            value, hits = eot_value(model, x_last, objective(loss, y_last, t_last),
                                    lambda lg: is_successful(lg, y_last, t_last), eot=eot, amp=amp)
            success = _offer(worst, model, idx[open_], x_last, y_last, t_last, hits, value, amp, eot)
            if trace is not None:
                trace.step(idx[open_], value, success)
    return worst.x


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str = "ce",
    target: torch.Tensor | None = None,
    bounds: threat.Bounds = (0.0, 1.0),
    eot: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing
    Adversarial Examples"): one step x + eps * sign(grad_x L) from the clean input (for L2, one
    step of length eps along the normalized gradient), clamped to the bounds.

    Of the clean and the stepped input, the worse for the model is returned, so FGSM never
    lowers the loss. ``eot`` averages the gradient (and the loss that compares the two) over that
    many passes of a randomized model, as in :func:`pgd`. ``generator`` is accepted for a uniform
    attack signature; FGSM is deterministic.
    """
    return pgd(
        model, x, y, eps=eps, norm=norm, steps=1, step_size=eps, random_start=False,
        loss=loss, target=target, bounds=bounds, eot=eot, generator=generator,
    )
