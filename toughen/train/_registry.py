"""The recipe contract and registry, a leaf that the recipe modules (:mod:`toughen.train.recipes`,
:mod:`toughen.train.single_step`) register into: what a recipe is given (:class:`RecipeContext`),
what it returns (:class:`StepOutput`), and which parameters belong to which recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from toughen import threat
from toughen._registry import Registry
from toughen.attacks import pgd
from toughen.errors import ToughenUsageError


@dataclass
class RecipeContext:
    """What a recipe may need for one step. ``eps`` is the current one (after any warm-up)."""

    eps: float
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    lam: float = 1.0
    beta: float = 6.0  # trades, mart
    free_replays: int = 4  # free
    gradalign_lambda: float = 0.2  # gradalign
    noise_std: float | None = None  # augment; default eps
    augment_crop: bool = True  # augment
    augment_flip: bool = False  # augment
    generator: torch.Generator | None = None
    # Backward + optimizer step, for recipes that take their own (free, atta_free).
    update: Callable[[torch.Tensor], None] | None = None
    # What a recipe carries from one batch to the next (free's perturbation); checkpointed.
    state: dict[str, Any] = field(default_factory=dict)
    # Which training examples the batch's rows are (their dataset indices) and how many there are,
    # for a recipe that remembers each example from one epoch to the next (atta, atta_free).
    index: torch.Tensor | None = None
    train_size: int | None = None

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training attack: PGD from a random start, last iterate (as in Madry et al.)."""
        if self.eps == 0:
            return x
        step_size = self.step_size if self.step_size is not None else threat.default_step_size(self.eps, self.steps)
        return pgd(
            model, x, y, eps=self.eps, norm=self.norm, steps=self.steps, step_size=step_size,
            bounds=self.bounds, keep_best=False, generator=self.generator,
        )


@dataclass
class StepOutput:
    loss: torch.Tensor
    clean_logits: torch.Tensor | None = None  # for the running train clean accuracy
    adv_logits: torch.Tensor | None = None  # for the running train robust accuracy
    updated: bool = False  # the recipe took its optimizer step(s) itself through ctx.update


Recipe = Callable[[nn.Module, torch.Tensor, torch.Tensor, RecipeContext], StepOutput]
RECIPES: Registry[Recipe] = Registry("recipe")


@dataclass(frozen=True)
class RecipeTraits:
    """What the rest of toughen needs to know of a recipe, declared where it is registered.

    parameters: the TrainConfig fields only this recipe reads; a sweep varies them only for it
        and the report shows them next to its name (every other field applies to all recipes).
    single_step: one gradient computation per attack step; the catastrophic-overfitting guard
        (toughen.train.guard) watches it.
    per_example: it keeps one perturbation per training example between epochs (in ctx.state),
        so it cannot take random crops, flips or torchrun.
    """

    parameters: tuple[str, ...] = ()
    single_step: bool = False
    per_example: bool = False


TRAITS: dict[str, RecipeTraits] = {}


def register_recipe(name: str, *, parameters: tuple[str, ...] = (), single_step: bool = False,
                    per_example: bool = False) -> Callable[[Recipe], Recipe]:
    """Register a recipe under ``name`` with its traits (:class:`RecipeTraits`), in one place."""
    add = RECIPES.register(name)

    def register(fn: Recipe) -> Recipe:
        add(fn)
        TRAITS[name] = RecipeTraits(tuple(parameters), single_step, per_example)
        return fn

    return register


def traits(recipe: str) -> RecipeTraits:
    """The traits of a registered recipe (none for an unregistered name)."""
    return TRAITS.get(recipe, RecipeTraits())


def list_recipes() -> list[str]:
    return RECIPES.names()


def recipe_parameters(recipe: str) -> tuple[str, ...]:
    return traits(recipe).parameters


def all_recipe_parameters() -> dict[str, tuple[str, ...]]:
    """Each registered recipe with parameters of its own: {recipe: its parameters}."""
    return {name: t.parameters for name, t in TRAITS.items() if t.parameters}


def require_index(ctx: RecipeContext, recipe: str) -> tuple[torch.Tensor, int]:
    if ctx.index is None or ctx.train_size is None:
        raise ToughenUsageError(
            f"the {recipe} recipe remembers each training example between epochs: give RecipeContext the "
            "batch's dataset indices (index) and the number of training examples (train_size)"
        )
    return ctx.index, ctx.train_size


def require_update(ctx: RecipeContext, recipe: str) -> Callable[[torch.Tensor], None]:
    if ctx.update is None:
        raise ToughenUsageError(
            f"the {recipe} recipe takes its own optimizer steps: give RecipeContext an update(loss) "
            "that runs backward and optimizer.step()"
        )
    return ctx.update
