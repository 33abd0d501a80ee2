"""Expectation over transformation (Athalye, Carlini and Wagner 2018, "Obfuscated Gradients Give a
False Sense of Security"; Athalye et al. 2018, "Synthesizing Robust Adversarial Examples").

A randomized model (input noise, random resizing, dropout left on at test time) gives a different
gradient on every pass, and a single pass points an attack in a random direction. EOT attacks the
expected loss instead: its gradient is estimated by the average of ``eot`` independent
forward/backward passes. The gradient attacks (pgd, fgsm, apgd) take ``eot=N`` and read every loss
value and gradient through the two functions here; with ``eot=1`` they are one plain pass, so a
deterministic model is attacked exactly as without EOT.

Who counts as fooled at a point is decided over the same passes: the functions return, per
example, the fraction of passes that the attack's success test holds in (``hits``), and an
example is fooled only when it holds in *every* one of them. One unlucky draw is not a fooling
input, and an attack that stopped there would hand the evaluation a point where the model is
still right most of the time; until then the attacks keep, per example, the point with the most
fooling passes (then the highest loss).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from toughen.errors import check_number
from toughen.logits import logits_of
from toughen.precision import autocast_for

Of = Callable[[torch.Tensor], torch.Tensor]  # per-example quantity of the logits (a loss value, or success)


def check_eot(eot: int) -> int:
    return int(check_number("eot", eot, low=1, whole=True))


def eot_grad(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, value_of: Of, success_of: Of, *, eot: int,
             amp: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(value, grad, hits)`` at ``x + delta``: ``value_of(logits)`` and its gradient with respect
    to ``delta`` (only: nothing accumulates on the parameters), each averaged over ``eot`` passes,
    and the fraction of the passes in which ``success_of(logits)`` holds (a float; 1 = fooled in
    all). All three are detached."""
    total_v = total_g = hits = None
    for _ in range(eot):
        d = delta.detach().requires_grad_(True)
        with torch.enable_grad(), autocast_for(x, amp):
            logits = logits_of(model, x + d)
            value = value_of(logits)
            (grad,) = torch.autograd.grad(value.sum(), d)
        hit = success_of(logits.detach()).float()
        if total_v is None:  # the first pass as it is: eot=1 adds no arithmetic
            total_v, total_g, hits = value.detach(), grad, hit
        else:
            total_v, total_g, hits = total_v + value.detach(), total_g + grad, hits + hit
    if eot > 1:
        total_v, total_g, hits = total_v / eot, total_g / eot, hits / eot
    return total_v, total_g, hits


def eot_value(model: nn.Module, x: torch.Tensor, value_of: Of, success_of: Of | None = None, *, eot: int,
              amp: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(value, hits)`` at ``x`` without gradients: ``value_of(logits)`` averaged over ``eot``
    passes, and the fraction of them in which ``success_of(logits)`` holds (None without
    ``success_of``)."""
    total_v = hits = None
    for _ in range(eot):
        with torch.no_grad(), autocast_for(x, amp):
            logits = logits_of(model, x)
            value = value_of(logits)
        hit = success_of(logits).float() if success_of is not None else None
        if total_v is None:
            total_v, hits = value, hit
        else:
            total_v, hits = total_v + value, (hits + hit if hit is not None else None)
    if eot > 1:
        total_v, hits = total_v / eot, (hits / eot if hits is not None else None)
    return total_v, hits


def eot_logits(model: nn.Module, x: torch.Tensor, *, eot: int) -> list[torch.Tensor]:
    """The logits of ``eot`` passes at ``x``, without gradients."""
    with torch.no_grad():
        return [logits_of(model, x) for _ in range(eot)]
