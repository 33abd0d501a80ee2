"""Schedules over training progress in [0, 1): the learning rate and the eps warm-up.

Both are pure functions of progress, so a resumed run needs no scheduler state beyond the
epoch it resumes at.
"""

from __future__ import annotations

import math


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1) of training."""
    if schedule == "onecycle":  # linear up over the first 30%, then linear down to 0
        return progress / 0.3 if progress < 0.3 else max(0.0, (1 - progress) / 0.7)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "piecewise":  # x0.1 at 50% and again at 75% (Madry et al., Rice et al.)
        return 1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01
    return 1.0


def eps_at(eps: float, warmup: float, progress: float) -> float:
    """eps ramps linearly from 0 over the first ``warmup`` fraction of training."""
    if warmup <= 0 or progress >= warmup:
        return eps
    return eps * progress / warmup
