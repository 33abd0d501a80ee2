"""Training recipes: each is one function that turns a batch into the loss to minimize.

A recipe has the signature ``recipe(model, x, y, ctx) -> StepOutput`` and can be dropped into
any training loop::

    ctx = RecipeContext(eps=0.3, norm="linf", steps=10, step_size=0.075)
    out = RECIPES.get("pgd")(model, x, y, ctx)
    out.loss.backward(); optimizer.step()

The loop in :mod:`toughen.train.loop` sets the model's mode; recipes never change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from toughen._registry import Registry
from toughen.attacks import pgd


@dataclass
class RecipeContext:
    """What a recipe may need for one step. ``eps`` is the current one (after any warm-up)."""

    eps: float
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    lam: float = 1.0
    generator: torch.Generator | None = None

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training attack: PGD from a random start, last iterate (as in Madry et al.)."""
        if self.eps == 0:
            return x
        step_size = self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.steps, 1)
        return pgd(
            model, x, y, eps=self.eps, norm=self.norm, steps=self.steps, step_size=step_size,
            bounds=self.bounds, keep_best=False, generator=self.generator,
        )


@dataclass
class StepOutput:
    loss: torch.Tensor
    clean_logits: torch.Tensor | None = None  # for the running train clean accuracy
    adv_logits: torch.Tensor | None = None  # for the running train robust accuracy


Recipe = Callable[[nn.Module, torch.Tensor, torch.Tensor, RecipeContext], StepOutput]
RECIPES: Registry[Recipe] = Registry("recipe")


def list_recipes() -> list[str]:
    return RECIPES.names()


@RECIPES.register("standard")
def standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """Empirical risk minimization on clean inputs: the undefended baseline."""
    logits = model(x)
    return StepOutput(F.cross_entropy(logits, y), clean_logits=logits)


@RECIPES.register("pgd")
def madry(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """Madry et al. (2018): min_theta E[max_{||delta|| <= eps} L(f(x + delta), y)], the inner
    max approximated by PGD; the model is trained on adversarial inputs only."""
    x_adv = ctx.attack(model, x, y)
    logits_adv = model(x_adv)
    return StepOutput(F.cross_entropy(logits_adv, y), adv_logits=logits_adv)


@RECIPES.register("mix")
def mix(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """The mixed objective L(f(x), y) + lam * L(f(x_adv), y) (Goodfellow et al. 2015 used
    alpha * L_clean + (1 - alpha) * L_adv; lam = (1 - alpha) / alpha)."""
    x_adv = ctx.attack(model, x, y)
    logits = model(torch.cat([x, x_adv]))
    clean, adv = logits[: len(x)], logits[len(x) :]
    loss = F.cross_entropy(clean, y) + ctx.lam * F.cross_entropy(adv, y)
    return StepOutput(loss, clean_logits=clean, adv_logits=adv)
