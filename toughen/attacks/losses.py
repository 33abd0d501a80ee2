"""Per-example attack objectives (higher = worse for the model) and the success test."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from toughen.errors import ToughenUsageError

LOSSES = ("ce", "margin")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin max_{j != y} z_j - z_y: positive exactly when y is not the top class."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(dim=1) - true


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


_LOSS_FUNCTIONS = {"ce": cross_entropy, "margin": margin}


def objective(loss: str, y: torch.Tensor, target: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-example quantity an attack maximizes.

    Untargeted: the loss of the true class. Targeted: minus the loss of the target class, so that
    maximizing it drives the prediction to ``target`` (for the margin loss this is
    z_t - max_{j != t} z_j).
    """
    if loss not in _LOSS_FUNCTIONS:
        raise ToughenUsageError(f"unknown attack loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    fn = _LOSS_FUNCTIONS[loss]
    if target is None:
        return lambda logits: fn(logits, y)
    return lambda logits: -fn(logits, target)


def is_successful(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Per-example bool: misclassified (untargeted) or classified as the target (targeted)."""
    pred = logits.argmax(dim=1)
    return pred != y if target is None else pred == target
