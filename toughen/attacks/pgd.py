"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn

from toughen import threat
from toughen.attacks.losses import is_successful, objective
from toughen.errors import ToughenUsageError


class _WorstCase:
    """Per example, the worst input seen so far: successful beats unsuccessful, then higher loss."""

    def __init__(self, x: torch.Tensor):
        self.x = x.detach().clone()
        self.success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.value = torch.full((len(x),), float("-inf"), device=x.device)

    def update(self, x_new: torch.Tensor, success: torch.Tensor, value: torch.Tensor) -> None:
        value = value.detach().float()
        better = (success & ~self.success) | ((success == self.success) & (value > self.value))
        self.x[better] = x_new.detach()[better]
        self.success |= success
        self.value = torch.where(better, value, self.value)


def _check_inputs(x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> None:
    if not x.is_floating_point():
        raise ToughenUsageError(f"x must be a floating-point tensor in the data bounds, got {x.dtype}")
    if y.dim() != 1 or len(y) != len(x):
        raise ToughenUsageError(f"y must hold one label per input: x has {len(x)} rows, y has shape {tuple(y.shape)}")
    if target is not None and target.shape != y.shape:
        raise ToughenUsageError(f"target must have the shape of y {tuple(y.shape)}, got {tuple(target.shape)}")


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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the loss inside an eps-ball (Madry et al. 2018,
    "Towards Deep Learning Models Resistant to Adversarial Attacks").

    x_{t+1} = Proj_{||delta|| <= eps, x + delta in bounds}(x_t + step_size * d_t), where d_t is
    sign(grad) for L-inf and grad / ||grad||_2 for L2.

    Args:
        model: maps inputs in ``bounds`` to logits. Its train/eval mode is left as it is.
        x: inputs, any shape ``(N, ...)``, inside ``bounds``. The result has its device and dtype.
        y: int64 labels, shape ``(N,)``.
        eps: radius of the threat model, in the units of x (e.g. 8/255 or 0.3 for [0, 1] data).
        steps: gradient steps per restart. step_size defaults to 2.5 * eps / steps.
        restarts: independent random starts; per example the worst result is kept
            (misclassified first, then highest loss).
        loss: "ce" (cross-entropy) or "margin" (max_{j != y} z_j - z_y).
        target: optional target labels; the attack then drives the prediction towards them.
        keep_best: return, per example, the worst iterate seen (default) rather than the last one.
        generator: the source of randomness for the random start; the global one when None.

    Returns:
        x_adv with ``||x_adv - x|| <= eps`` and ``x_adv`` inside ``bounds``, detached.

    Example:
        >>> x_adv = pgd(model, x, y, eps=8 / 255, steps=10)
    """
    _check_inputs(x, y, target)
    threat.check_eps(eps, norm, bounds)
    if steps < 0 or int(steps) != steps:
        raise ToughenUsageError(f"steps must be a whole number >= 0, got {steps}")
    if restarts < 1:
        raise ToughenUsageError(f"restarts must be >= 1, got {restarts}")
    if step_size is None:
        step_size = 2.5 * eps / max(steps, 1)
    if step_size < 0:
        raise ToughenUsageError(f"step_size must be >= 0, got {step_size}")

    x = x.detach()
    value_of = objective(loss, y, target)
    worst = _WorstCase(x)
    for _ in range(restarts):
        if random_start:
            delta = threat.random_start(x, eps, norm, bounds, generator)
        else:
            delta = torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                logits = model(x + delta)
                value = value_of(logits)
                # Gradient with respect to delta only: nothing accumulates on the parameters.
                (grad,) = torch.autograd.grad(value.sum(), delta)
            if keep_best:
                worst.update(x + delta, is_successful(logits, y, target), value)
            delta = threat.step(x, delta.detach(), grad, step_size, eps, norm, bounds)
        if keep_best or restarts > 1:
            with torch.no_grad():
                logits = model(x + delta)
            worst.update(x + delta, is_successful(logits, y, target), value_of(logits))
        else:
            return (x + delta).detach()
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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing
    Adversarial Examples"): one step x + eps * sign(grad_x L) from the clean input (for L2, one
    step of length eps along the normalized gradient), clamped to the bounds.

    Of the clean and the stepped input, the worse for the model is returned, so FGSM never
    lowers the loss. ``generator`` is accepted for a uniform attack signature; FGSM is
    deterministic.
    """
    return pgd(
        model, x, y, eps=eps, norm=norm, steps=1, step_size=eps, random_start=False,
        loss=loss, target=target, bounds=bounds, generator=generator,
    )
