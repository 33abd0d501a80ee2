"""Evaluate a model under one attack: the numbers `toughen eval` prints."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from toughen.attacks import Attack
from toughen.evaluation.accuracy import clean_correct
from toughen.evaluation.cascade import cascade, model_device, shared


def evaluate_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    *,
    eps: float,
    norm: str = "linf",
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` on (x, y) under ``attack`` at radius ``eps``.

    Returns a dict with ``clean_accuracy``, ``robust_accuracy``, ``attack``, ``eps``, ``norm``,
    ``n``, ``seconds`` and the per-example ``robust`` mask (a bool tensor).
    """
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    start = time.perf_counter()
    clean = clean_correct(model, x, y, batch_size)
    # attack_correct's batches and generator, from the clean mask already at hand
    robust = cascade(model, x, y, [attack], eps=eps, norm=norm, bounds=bounds, robust=clean.clone(),
                     batch_size=batch_size, pack=False, generators=shared(generator), progress=progress)
    return {
        "clean_accuracy": clean.float().mean().item(),
        "robust_accuracy": robust.float().mean().item(),
        "attack": attack.label,
        "eps": eps,
        "norm": norm,
        "n": len(x),
        "seconds": time.perf_counter() - start,
        "robust": robust,
    }
