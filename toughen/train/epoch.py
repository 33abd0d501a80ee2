"""The pieces of one training epoch in :func:`toughen.train.loop.fit`: which recipe a batch runs
(the guard may have switched it), the guard's probe, the epoch's running sums and its metrics
row, and the selection of the best epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from toughen import threat
from toughen.runtime import Dist
from toughen.train.config import TrainConfig
from toughen.train.cost import PassCounter
from toughen.train.guard import PGD2, Guard
from toughen.train.recipes import RECIPES, StepOutput
from toughen.train.state import TrainingState

# The guard's names for the recipes it switches to that are a registered recipe with fewer attack
# steps: its last fallback (guard.PGD2) is the pgd recipe with 2 steps.
GUARD_VARIANTS: dict[str, tuple[str, int]] = {PGD2: ("pgd", 2)}


@dataclass(frozen=True)
class RecipeInUse:
    """The recipe a batch runs: ``cfg``'s, or the one the guard switched to."""

    name: str  # in RECIPES
    run: Callable[..., StepOutput]
    steps: int  # of the training attack
    step_size: float  # of the training attack at the full eps, before any warm-up scales it
    label: str  # for the metrics row: "pgd-2" for the guard's 2-step pgd


def recipe_in_use(guard: Guard, cfg: TrainConfig) -> RecipeInUse:
    """What the guard's current recipe means for the next batch."""
    if guard.recipe in GUARD_VARIANTS:
        name, steps = GUARD_VARIANTS[guard.recipe]
        return RecipeInUse(name, RECIPES.get(name), steps, threat.default_step_size(cfg.eps, steps),
                           _variant_label(guard.recipe))
    return RecipeInUse(guard.recipe, RECIPES.get(guard.recipe), cfg.steps, cfg.resolved_step_size(), guard.recipe)


def row_recipe(last_batch: RecipeInUse, guard: Guard) -> str:
    """The recipe named in an epoch's metrics row: the one its last batch ran, except that a switch
    to one of GUARD_VARIANTS at the epoch's closing probe is named already (as rows always have;
    a switch to a registered recipe there shows from the next epoch's row on)."""
    return _variant_label(guard.recipe) if guard.recipe in GUARD_VARIANTS else last_batch.label


def _variant_label(guard_recipe: str) -> str:
    name, steps = GUARD_VARIANTS[guard_recipe]
    return f"{name}-{steps}"


@dataclass
class EpochTally:
    """One epoch's running sums for its metrics row. Counts are this rank's until
    :meth:`sum_over_ranks`; passes are (forward, backward) per example."""

    loss_sum: float = 0.0
    clean_hits: float = 0.0
    clean_seen: float = 0.0
    adv_hits: float = 0.0
    adv_seen: float = 0.0
    train_passes: list[int] = field(default_factory=lambda: [0, 0])
    guard_passes: list[int] = field(default_factory=lambda: [0, 0])
    val_passes: tuple[int, int] = (0, 0)
    guard_seconds: float = 0.0
    events: list[dict] = field(default_factory=list)  # the guard's
    guard_probe: dict[str, float] | None = None  # the guard's last probe of the epoch: PGD and FGSM accuracy

    def count(self, out: StepOutput, y: torch.Tensor) -> None:
        """Add a batch's loss and, where the recipe returned them, its clean and adversarial hits."""
        self.loss_sum += out.loss.item() * len(y)  # note: a sync point, once per batch
        if out.clean_logits is not None:
            self.clean_hits += (out.clean_logits.argmax(1) == y).sum().item()
            self.clean_seen += len(y)
        if out.adv_logits is not None:
            self.adv_hits += (out.adv_logits.argmax(1) == y).sum().item()
            self.adv_seen += len(y)

    def add_train_passes(self, counts: tuple[int, int]) -> None:
        self.train_passes[0] += counts[0]
        self.train_passes[1] += counts[1]

    def add_guard_passes(self, counts: tuple[int, int]) -> None:
        self.guard_passes[0] += counts[0]
        self.guard_passes[1] += counts[1]

    def sum_over_ranks(self, dist: Dist, device: torch.device) -> None:
        """The whole job's sums, the same on every rank (nothing to do in a single process)."""
        if not dist.enabled:
            return
        (self.loss_sum, self.clean_hits, self.clean_seen, self.adv_hits, self.adv_seen, *counts) = dist.sum(
            [self.loss_sum, self.clean_hits, self.clean_seen, self.adv_hits, self.adv_seen, *self.train_passes,
             *self.guard_passes, *self.val_passes], device)
        counts = [int(c) for c in counts]
        self.train_passes, self.guard_passes, self.val_passes = counts[0:2], counts[2:4], tuple(counts[4:6])


def probe_guard(state: TrainingState, tally: EpochTally, counter: PassCounter, epoch: int, batch: int) -> None:
    """The guard's probe after ``batch`` batches of ``epoch`` (it may restore the last good weights and
    switch recipe); its passes, seconds and event go into ``tally`` apart from training's."""
    tally.add_train_passes(counter.take())
    start = time.perf_counter()
    state.dist.sync_buffers(state.model)  # the same model on every rank, so the same decision
    state.model.eval()
    event = state.guard.check(state.model, state.optimizer, state.splits.bounds, epoch, batch)
    state.model.train()
    if event is not None:
        tally.events.append(event)
    tally.guard_probe = state.guard.last_probe
    tally.guard_seconds += time.perf_counter() - start
    tally.add_guard_passes(counter.take())


def metrics_row(epoch: int, recipe: str, tally: EpochTally, val_clean: float, val_robust: float, best_epoch: int,
                eps: float, lr: float, n_train: int, seconds: float, val_seconds: float) -> dict[str, Any]:
    """One epoch's row of metrics.jsonl, from its tally summed over ranks; ``eps`` and ``lr`` are
    those of its last batch."""
    work = sum(tally.train_passes) + sum(tally.guard_passes)
    return {
        "epoch": epoch,
        "recipe": recipe,
        "loss": tally.loss_sum / n_train,
        "train_clean_accuracy": tally.clean_hits / tally.clean_seen if tally.clean_seen else None,
        "train_robust_accuracy": tally.adv_hits / tally.adv_seen if tally.adv_seen else None,
        "val_clean_accuracy": val_clean,
        "val_robust_accuracy": val_robust,
        "best_epoch": best_epoch,
        "eps": eps,
        "lr": lr,
        "forward_passes": tally.train_passes[0],
        "backward_passes": tally.train_passes[1],
        "guard_forward_passes": tally.guard_passes[0],
        "guard_backward_passes": tally.guard_passes[1],
        "val_forward_passes": tally.val_passes[0],
        "val_backward_passes": tally.val_passes[1],
        # against a standard epoch: one forward and one backward pass per training example
        "cost_multiplier": work / (2 * n_train),
        "guard_events": tally.events,
        "guard_probe": tally.guard_probe,
        "seconds": seconds,
        "guard_seconds": tally.guard_seconds,
        "val_seconds": val_seconds,
    }


@dataclass
class Selection:
    """The best validation epoch so far, by robust then clean accuracy, and early stopping."""

    # epoch, key [robust, clean], weights (and with --ema the raw ones) on the CPU: as checkpointed
    best: dict[str, Any] | None = None

    def offer(self, epoch: int, val_robust: float, val_clean: float, model: nn.Module,
              raw: dict[str, torch.Tensor] | None = None) -> bool:
        """Keep a copy of ``model``'s weights (and of ``raw``, the trained weights when ``model``
        holds their average) if ``epoch`` beats the best so far; whether it did."""
        key = [val_robust, val_clean]
        if self.best is None or key > self.best["key"]:
            self.best = {"epoch": epoch, "key": key, "weights": _clone(model.state_dict())}
            if raw is not None:
                self.best["raw"] = _clone(raw)
            return True
        return False

    def out_of_patience(self, epoch: int, patience: int | None) -> bool:
        """Whether ``patience`` epochs have passed without a better one, before ``epoch`` starts."""
        return patience is not None and self.best is not None and epoch - 1 - self.best["epoch"] >= patience


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().cpu() for k, v in state.items()}
