"""An optional per-step trace of the gradient attacks, for the indicators of attack failure.

Pintor et al. (2022, "Indicators of Attack Failure: Debugging and Improving Optimization of
Adversarial Examples", NeurIPS) read an attack's failures off its own optimization: whether the
loss was still rising when the steps ran out, whether an iterate fooled the model but another
point was returned. That needs what happens at each step, which an attack function does not
return. So pgd and apgd report each step to the :class:`Trace` that is active in the current
context, if any:

    trace = Trace()
    with recording(trace):
        x_adv = pgd(model, x, y, eps=0.1, steps=20)
    trace.runs  # one Run per restart (per target class for APGD-T)

With no trace active (the default), an attack reads one context variable per call and nothing
else: the same arithmetic, the same result. The evaluation layer (toughen.evaluation.indicators)
turns a trace into indicators; this module only holds what the attacks report.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch


@dataclass
class Run:
    """One run of an attack's iterations (a restart, or one target class of APGD-T) over the rows
    ``rows`` of the attacked batch. ``steps`` holds, per step, ``(at, loss, fooled)``: the positions
    within ``rows`` still attacked at that step (examples leave a run once fooled), the attack's
    own objective at each one's iterate (higher = worse for the model) and whether that iterate
    fools the model by the attack's own test."""

    rows: torch.Tensor
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


@dataclass
class Trace:
    """The runs that the attacks called under :func:`recording` reported, in order."""

    runs: list[Run] = field(default_factory=list)

    def run(self, rows: torch.Tensor) -> None:
        """A new run starts, over the rows ``rows`` of the batch the attack was called with."""
        self.runs.append(Run(rows.detach()))

    def step(self, at: torch.Tensor, loss: torch.Tensor, fooled: torch.Tensor) -> None:
        """One step of the current run: positions ``at`` within its rows, their loss and whether
        their iterate fools the model. Kept on the attack's device: no synchronization here."""
        self.runs[-1].steps.append((at.detach(), loss.detach().float(), fooled.detach()))

    def clear(self) -> None:
        self.runs.clear()


_ACTIVE: ContextVar[Trace | None] = ContextVar("toughen_attack_trace", default=None)


def active() -> Trace | None:
    """The trace the attacks report to in this context (None: no one is recording)."""
    return _ACTIVE.get()


@contextmanager
def recording(trace: Trace | None) -> Iterator[Trace | None]:
    """Attacks called inside report their steps to ``trace``; None stops any outer recording (for
    attacks run on another model, such as a transfer attack's surrogate)."""
    token = _ACTIVE.set(trace)
    try:
        yield trace
    finally:
        _ACTIVE.reset(token)
