"""The catastrophic-overfitting guard for the single-step recipes.

Single-step adversarial training at a large eps can collapse within an epoch: accuracy under
PGD falls to ~0 while accuracy under the training attack itself holds or rises, because the
loss surface becomes so curved that one gradient step no longer finds the adversarial
examples that a few steps do (Wong et al. 2020, "Fast is better than free"; Andriushchenko and
Flammarion 2020). On MNIST the clean accuracy often falls with it.

The guard runs a cheap PGD probe on a fixed batch of validation examples (same examples, same
random start every time, so probes are comparable and consume no training randomness). When
the probe's PGD accuracy falls below ``guard_ratio`` times its best so far, it restores the
weights and optimizer state of the last probe that passed, and switches the run to a safer
recipe: ``guard_fallback`` (N-FGSM by default), and after a second collapse PGD with 2 steps.
Every probe within ``GOOD_FRACTION`` of the best becomes the new "last good" snapshot.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from toughen.attacks import Attack
from toughen.evaluation import attack_correct
from toughen.train.config import TrainConfig

# Below this best probe accuracy a "drop to half" is within the noise of a 128-example probe
# (and early in training, or during an eps warm-up, the best is still rising from 0).
MIN_BEST = 0.1
# A snapshot is "good" only when its probe is near the best, so that a restore does not land on
# weights already sliding towards the collapse (with their optimizer momentum).
GOOD_FRACTION = 0.8
PGD2 = "pgd2"  # the last fallback: the pgd recipe with 2 steps


class Guard:
    """Probe, decide, restore, switch. ``active`` is False for multi-step recipes or when the
    guard is turned off; then it does nothing."""

    def __init__(self, cfg: TrainConfig, x_val: torch.Tensor, y_val: torch.Tensor):
        self.cfg = cfg
        self.active = cfg.guarded()
        self.x, self.y = x_val[: cfg.guard_n], y_val[: cfg.guard_n]
        self.recipe = cfg.recipe  # the recipe now in use; changes on a collapse
        self.best = 0.0
        self.events: list[dict[str, Any]] = []
        self.probes = 0
        self._good: dict[str, Any] | None = None  # the last snapshot that passed

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
        if self.best >= MIN_BEST and pgd_acc < self.cfg.guard_ratio * self.best and self._good is not None:
            # FGSM's accuracy only goes into the record (the sign of a collapse: it holds while
            # PGD's falls), so it is measured only here, before the restore.
            fgsm_acc = self._accuracy(model, bounds, Attack("fgsm"))
            return self._recover(model, optimizer, epoch, batch, pgd_acc, fgsm_acc)
        self.best = max(self.best, pgd_acc)
        if pgd_acc < GOOD_FRACTION * self.best:
            return None
        self._good = {
            "epoch": epoch, "batch": batch,
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
        }
        return None

    def _recover(self, model, optimizer, epoch, batch, pgd_acc, fgsm_acc) -> dict[str, Any]:
        good = self._good
        model.load_state_dict(good["model"])
        optimizer.load_state_dict(copy.deepcopy(good["optimizer"]))
        before = self.recipe
        self.recipe = self._next_recipe()
        event = {
            "event": "catastrophic_overfitting",
            "epoch": epoch,
            "batch": batch,
            "probe_pgd_accuracy": pgd_acc,
            "probe_fgsm_accuracy": fgsm_acc,
            "best_probe_pgd_accuracy": self.best,
            "restored_from": {"epoch": good["epoch"], "batch": good["batch"]},
            "switched": f"{before} -> {self.recipe}",
        }
        self.events.append(event)
        return event

    def _next_recipe(self) -> str:
        chain = [self.cfg.guard_fallback, PGD2]
        if self.recipe in chain:
            return chain[min(chain.index(self.recipe) + 1, len(chain) - 1)]
        return chain[0] if chain[0] != self.recipe else PGD2

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "best": self.best, "events": self.events, "probes": self.probes,
                "good": self._good}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recipe, self.best = state["recipe"], state["best"]
        self.events, self.probes, self._good = state["events"], state["probes"], state["good"]
