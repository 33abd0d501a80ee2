"""Per-example correctness, clean and under one attack, computed in batches.

These return boolean masks rather than percentages so that callers can take worst cases per
example across attacks and reduce counts across processes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from toughen.logits import logits_of


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Per-example bool: the model classifies the clean input correctly."""
    device = next(model.parameters()).device
    out = [logits_of(model, x[s].to(device)).argmax(1).cpu() == y[s]
           for s in _batches(len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


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

    An example the model already gets wrong counts as not robust, and is not attacked.
    """
    device = next(model.parameters()).device
    robust = torch.zeros(len(x), dtype=torch.bool)
    slices = list(_batches(len(x), batch_size))
    for s in tqdm(slices, desc=desc, disable=not progress, leave=False):
        xb, yb = x[s].to(device), y[s].to(device)
        with torch.no_grad():
            ok = logits_of(model, xb).argmax(1) == yb
        if ok.any():
            x_adv = attack(model, xb[ok], yb[ok], eps=eps, norm=norm, bounds=bounds, generator=generator)
            with torch.no_grad():
                ok[ok.clone()] = logits_of(model, x_adv).argmax(1) == yb[ok]
        robust[s] = ok.cpu()
    return robust
