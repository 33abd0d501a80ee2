"""Per-example correctness, clean and under one attack, computed in batches.

These return boolean masks rather than percentages so that callers can take worst cases per
example across attacks and reduce counts across processes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from toughen.evaluation.cascade import cascade, model_device, right_in_draws, shared
from toughen.logits import logits_of


@torch.no_grad()
def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Per-example bool (on the CPU): the model classifies the clean input correctly."""
    device = model_device(model)
    out = [logits_of(model, x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size].cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def clean_right(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
                draws: int = 10) -> torch.Tensor:
    """Per example (a CPU float), the fraction of ``draws`` forward passes of a randomized model
    that classify the clean input correctly (:func:`toughen.evaluation.cascade.right_in_draws`)."""
    device = model_device(model)
    out = [right_in_draws(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device), draws)
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def attack_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Callable[..., torch.Tensor],
    *,
    eps: float,
    norm: str = "linf",
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 500,
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str = "attack",
) -> torch.Tensor:
    """Per-example bool: the model still classifies the attacked input correctly.

    An example the model already gets wrong counts as not robust, and is not attacked. The batches
    are the slices of ``batch_size`` examples of x, each attacking its clean-correct ones, and draw
    in turn from ``generator``.
    """
    return cascade(model, x, y, [attack], eps=eps, norm=norm, bounds=bounds,
                   robust=clean_correct(model, x, y, batch_size), batch_size=batch_size, pack=False,
                   generators=shared(generator), progress=progress, labels=[desc])
