"""The catastrophic-overfitting guard for the single-step recipes.

Single-step adversarial training at a large eps can collapse within an epoch: accuracy under
PGD falls to ~0 while accuracy under the training attack itself holds or rises, because the
loss surface becomes so curved that one gradient step no longer finds the adversarial
examples that a few steps do (Wong et al. 2020, "Fast is better than free"; Andriushchenko and
Flammarion 2020). On MNIST the clean accuracy often falls with it.

The guard runs a cheap PGD probe and an FGSM probe on a fixed batch of validation examples (same
examples, same random start every time, so probes are comparable and consume no training
randomness). It calls a collapse either of two signs:

- *fell*: the probe's PGD accuracy fell below ``guard_ratio`` times its best so far (the run was
  robust, then lost it);
- *fooled*: the probe's FGSM accuracy is at least ``MIN_FOOLED_FGSM`` while its PGD accuracy is
  below ``FOOLED_RATIO`` times it. A run that overfits its single-step attack from the first
  epoch (``fgsm`` at eps 0.3 on MNIST) never gains PGD accuracy to lose, so "fell" cannot see it,
  yet its FGSM accuracy climbs to the clean accuracy while PGD's stays near 0.

On a collapse it restores the weights and optimizer state of the last probe that passed (when
there is one), and switches the run to a safer recipe: ``guard_fallback``, and after a second
collapse PGD with 2 steps. Every probe within ``GOOD_FRACTION`` of the best that is not fooled
becomes the new "last good" snapshot.

The default fallback ("auto") is ``atta_free``, or PGD-2 where atta_free cannot run (random crops
or flips, torchrun), chosen by measurement (docs/training.md; fgsm at eps 0.3 on mnist5k, 8
epochs, seeds 0-2): switched to atta_free the collapsed run ended at 36.6-42.3% PGD-20 accuracy,
to PGD-2 at 18.5-20.0%, to N-FGSM (the default before) at 9.8% with clean accuracy at chance (N-FGSM's
unclipped noise of 2 eps plus a step of eps is most of the image at MNIST's eps).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from toughen.attacks import Attack
from toughen.evaluation import attack_correct
from toughen.train.config import PGD2, TrainConfig

# Below this best probe accuracy a "drop to half" is within the noise of a 128-example probe
# (and early in training, or during an eps warm-up, the best is still rising from 0).
MIN_BEST = 0.1
# A snapshot is "good" only when its probe is near the best, so that a restore does not land on
# weights already sliding towards the collapse (with their optimizer momentum).
GOOD_FRACTION = 0.8
# "Fooled" needs the single-step attack to have been beaten on a fair share of the probe: early in
# a healthy run both accuracies are small, and their ratio is noise.
MIN_FOOLED_FGSM = 0.3
# Healthy runs at MNIST's eps 0.3 keep PGD-5 accuracy at 0.44-0.79 of FGSM's (atta_free from scratch,
# seeds 0-2; 0.44-0.58 in the first epoch); a run recovering after a switch dips to 0.31 (atta_free)
# or 0.39 (pgd-2) at its first probe; a run fooled by its FGSM training sits at 0.03-0.19.
FOOLED_RATIO = 0.25


class Guard:
    """Probe, decide, restore, switch. ``active`` is False for multi-step recipes or when the
    guard is turned off; then it does nothing."""

    def __init__(self, cfg: TrainConfig, x_val: torch.Tensor, y_val: torch.Tensor, distributed: bool = False):
        self.cfg = cfg
        self.fallback = cfg.resolved_guard_fallback(distributed)
        self.active = cfg.guarded()
        self.x, self.y = x_val[: cfg.guard_n], y_val[: cfg.guard_n]
        self.recipe = cfg.recipe  # the recipe now in use; changes on a collapse
        self.best = 0.0
        self.events: list[dict[str, Any]] = []
        self.probes = 0
        self._good: dict[str, Any] | None = None  # the last snapshot that passed
        self.last_probe: dict[str, float] | None = None  # the last probe's accuracies, for the metrics row

    # ---------------------------------------------------------------- probe
    def _accuracy(self, model: nn.Module, bounds: tuple[float, float], attack: Attack) -> float:
        """Accuracy on the probe batch at the full eps, from the same random start every time.
        The caller sets eval mode."""
        device = next(model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(self.cfg.seed + 3)
        ok = attack_correct(model, self.x.to(device), self.y.to(device), attack, eps=self.cfg.eps,
                            norm=self.cfg.norm, bounds=bounds, generator=gen)
        return ok.float().mean().item()

    def probe(self, model: nn.Module, bounds: tuple[float, float]) -> float:
        """PGD accuracy on the probe batch: what the decision is made on."""
        return self._accuracy(model, bounds, Attack("pgd", {"steps": self.cfg.guard_steps, "early_stop": True}))

    def check(self, model: nn.Module, optimizer: torch.optim.Optimizer, bounds: tuple[float, float],
              epoch: int, batch: int) -> dict[str, Any] | None:
        """Probe; on a collapse restore the last good state, switch recipe, and return the event."""
        if not self.active:
            return None
        self.probes += 1
        pgd_acc = self.probe(model, bounds)
        fgsm_acc = self._accuracy(model, bounds, Attack("fgsm"))
        self.last_probe = {"pgd": pgd_acc, "fgsm": fgsm_acc}
        fell = self.best >= MIN_BEST and pgd_acc < self.cfg.guard_ratio * self.best and self._good is not None
        fooled = fgsm_acc >= MIN_FOOLED_FGSM and pgd_acc < FOOLED_RATIO * fgsm_acc
        if fell or fooled:
            return self._recover(model, optimizer, epoch, batch, pgd_acc, fgsm_acc, "fell" if fell else "fooled")
        self.best = max(self.best, pgd_acc)
        if pgd_acc < GOOD_FRACTION * self.best:
            return None
        self._good = {
            "epoch": epoch, "batch": batch,
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
        }
        return None

    def _recover(self, model, optimizer, epoch, batch, pgd_acc, fgsm_acc, sign: str) -> dict[str, Any]:
        good = self._good
        if good is not None:
            model.load_state_dict(good["model"])
            optimizer.load_state_dict(copy.deepcopy(good["optimizer"]))
        before = self.recipe
        self.recipe = self._next_recipe()
        event = {
            "event": "catastrophic_overfitting",
            "sign": sign,
            "epoch": epoch,
            "batch": batch,
            "probe_pgd_accuracy": pgd_acc,
            "probe_fgsm_accuracy": fgsm_acc,
            "best_probe_pgd_accuracy": self.best,
            # None: no probe had passed yet, so the run goes on from its current weights
            "restored_from": {"epoch": good["epoch"], "batch": good["batch"]} if good is not None else None,
            "switched": f"{before} -> {self.recipe}",
        }
        self.events.append(event)
        return event

    def _next_recipe(self) -> str:
        chain = [self.fallback, PGD2]
        if self.recipe in chain:
            return chain[min(chain.index(self.recipe) + 1, len(chain) - 1)]
        return chain[0] if chain[0] != self.recipe else PGD2

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "best": self.best, "events": self.events, "probes": self.probes,
                "good": self._good, "last_probe": self.last_probe}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recipe, self.best = state["recipe"], state["best"]
        self.events, self.probes, self._good = state["events"], state["probes"], state["good"]
        self.last_probe = state.get("last_probe")  # absent from checkpoints written before it was kept
