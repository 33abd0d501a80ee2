"""The cascade: the worst case per example over a list of attacks, in batches.

AutoAttack's semantics (Croce and Hein 2020): one per-example ``robust`` mask; each attack runs
only on the examples still robust and can only flip them to not robust, so the final mask is the
worst case over every attack, and cheap attacks that go first save the expensive ones work.
:func:`toughen.evaluate` (a suite, resumable), :func:`toughen.evaluation.attack_correct` and
:func:`toughen.evaluation.evaluate_attack` (one attack) all run this one loop; they differ only
in how they seed the attacks and batch the examples, which they pass in.

    robust = clean_correct(model, x, y)
    cascade(model, x, y, [Attack("fgsm"), Attack("pgd")], eps=0.1, robust=robust,
            generators=per_batch(seed=0, device=model_device(model)))

For a randomized model one forward pass is one draw of a random verdict, so ``draws=k`` judges
each attack's point by k independent passes: the example stays robust only if all k classify it
correctly (worst of k), and ``expected`` keeps per example the fraction of passes that did at the
point that decided it (see :func:`right_in_draws`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from toughen import threat
from toughen.logits import logits_of

# The seed of attack a's batch b is seed + ATTACK_SEED_STRIDE * a + b: far enough apart that no
# two (attack, batch) pairs of one evaluation share a seed.
ATTACK_SEED_STRIDE = 1_000_003

Generators = Callable[[int, int], "torch.Generator | None"]  # (attack index, batch index) -> its generator


def per_batch(seed: int, device: torch.device) -> Generators:
    """A fresh generator for each (attack, batch): a batch draws the same random numbers whatever
    ran before it, so an evaluation resumed after an interruption gives the uninterrupted answer."""
    return lambda a_i, b_i: torch.Generator(device=device).manual_seed(seed + ATTACK_SEED_STRIDE * a_i + b_i)


def shared(generator: torch.Generator | None) -> Generators:
    """One generator that every batch draws from in turn (None: the attacks' own defaults)."""
    return lambda a_i, b_i: generator


@dataclass(frozen=True)
class Start:
    """Where a resumed cascade picks up: the attacks before ``attack`` are done, and when ``todo`` is
    given, ``attack`` was interrupted after ``batches_done`` of the batches of ``todo`` (the mask it
    started from, which the robust mask no longer shows)."""

    attack: int = 0
    todo: torch.Tensor | None = None
    batches_done: int = 0


@dataclass(frozen=True)
class Batch:
    """One finished batch, as ``on_batch`` sees it."""

    attack: int
    batch: int
    todo: torch.Tensor  # the mask this attack started from
    seconds: float  # this batch's attack and check
    idx: torch.Tensor | None = None  # the examples it attacked (indices into x)
    still: torch.Tensor | None = None  # which of them its point left robust (CPU bool)


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def right_in_draws(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    """Per example (a CPU float), the fraction of ``draws`` independent forward passes at ``x``
    that classify it as ``y``: 1 or 0 for a deterministic model, anything between for a
    randomized one."""
    right = torch.zeros(len(x))
    for _ in range(draws):
        right += (logits_of(model, x).argmax(1) == y).cpu().float()
    return right / draws


def _batches(todo: torch.Tensor, batch_size: int, pack: bool) -> list[torch.Tensor]:
    """The indices of ``todo``'s examples in batches: packed into full batches, or (pack=False) those
    of each slice [k * batch_size, (k + 1) * batch_size) of all the examples, possibly none."""
    if pack:
        idx = todo.nonzero().squeeze(1)
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return [i + todo[i:i + batch_size].nonzero().squeeze(1) for i in range(0, len(todo), batch_size)]


def cascade(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Callable[..., torch.Tensor]],
    *,
    eps: float,
    norm: str = "linf",
    bounds: threat.Bounds = (0.0, 1.0),
    robust: torch.Tensor,
    batch_size: int = 500,
    generators: Generators | None = None,
    pack: bool = True,
    start: Start = Start(),
    on_batch: Callable[[Batch], None] | None = None,
    on_attack: Callable[[int], None] | None = None,
    progress: bool = False,
    labels: Sequence[str] | None = None,
    draws: int = 1,
    expected: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``attacks`` in order on the examples of (x, y) still ``robust``, flipping to False each
    one an attack fools; ``robust`` (a CPU bool mask, usually the clean-correct one) is updated in
    place and returned.

    Args:
        attacks: callables ``(model, x, y, *, eps, norm, bounds, generator) -> x_adv``, such as
            :class:`toughen.attacks.Attack`; each sees the examples still robust when it starts.
        generators: each batch's generator, from (attack index, batch index): :func:`per_batch`
            or :func:`shared`; None leaves the attacks to their own defaults.
        pack: batch the examples to attack into full batches (default), or keep each example in
            the slice of ``batch_size`` examples of x it falls in, attacking the slice's robust ones.
        start: skip what an interrupted run finished (:class:`Start`).
        on_batch, on_attack: called after each batch (with a :class:`Batch`) and after each
            attack (with its index), when ``robust`` shows it: to record progress or results.
        labels: the progress bars' names, one per attack (default: each attack's ``label``).
        draws: forward passes that judge each attack's point: 1 for a deterministic model; for a
            randomized one k > 1, and an example stays robust only if all k classify it correctly.
        expected: with ``draws`` > 1, a CPU float per example (the fraction of draws right at the
            clean input, usually), lowered in place to the fraction right at each attacked point.
    """
    device = model_device(model)
    for a_i, attack in enumerate(attacks):
        if a_i < start.attack:
            continue  # finished before an interruption
        resumed = a_i == start.attack and start.todo is not None
        todo = start.todo if resumed else robust.clone()
        skip = start.batches_done if resumed else 0
        label = labels[a_i] if labels is not None else getattr(attack, "label", "attack")
        for b_i, idx in enumerate(tqdm(_batches(todo, batch_size, pack), desc=label, disable=not progress,
                                       leave=False)):
            if b_i < skip or len(idx) == 0:
                continue
            t0 = time.perf_counter()
            xb, yb = x[idx].to(device), y[idx].to(device)
            gen = generators(a_i, b_i) if generators is not None else None
            x_adv = attack(model, xb, yb, eps=eps, norm=norm, bounds=bounds, generator=gen)
            if draws == 1:
                with torch.no_grad():
                    still = (logits_of(model, x_adv).argmax(1) == yb).cpu()
            else:
                right = right_in_draws(model, x_adv, yb, draws)
                still = right == 1
                if expected is not None:
                    expected[idx] = torch.minimum(expected[idx], right)
            robust[idx] &= still  # an attack can only flip examples to not robust
            if on_batch is not None:
                on_batch(Batch(a_i, b_i, todo, time.perf_counter() - t0, idx, still))
        if on_attack is not None:
            on_attack(a_i)
    return robust
