"""The recipe contract and registry, a leaf that the recipe modules (:mod:`toughen.train.recipes`,
:mod:`toughen.train.single_step`) register into: what a recipe is given (:class:`RecipeContext`),
what it returns (:class:`StepOutput`), and the recipe's own parameters.

A recipe is declared in one place: its function and a small frozen dataclass of its parameters,
each made with :func:`param` (default, one line of doc, range)::

    @dataclass(frozen=True)
    class MixParams:
        lam: float = param(1.0, "Weight of the adversarial loss.", low=0)

    @register_recipe("mix", params=MixParams)
    def mix(model, x, y, ctx):
        lam = ctx.params_for(MixParams).lam
        ...

TrainConfig's flat keys (config.yaml, ``TrainConfig(lam=0.5)``), their checks, the ``train``
command's flags, the sweep's grid keys and the report's labels are all derived from that
declaration (:func:`declared_parameters`); nothing else needs to be edited.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from toughen import threat
from toughen._registry import Registry
from toughen.attacks import pgd
from toughen.errors import ToughenUsageError


P = TypeVar("P")


def param(default: Any, doc: str, *, low: float | None = None, high: float | None = None, above: bool = False,
          whole: bool = False) -> Any:
    """One field of a recipe's parameter dataclass: its default, one line of doc (the CLI's help)
    and its range, checked as :func:`toughen.errors.check_number` does (numbers only; a ``None``
    default makes it optional)."""
    limits = {k: v for k, v in dict(low=low, high=high).items() if v is not None}
    limits.update({k: True for k, v in dict(above=above, whole=whole).items() if v})
    return field(default=default, metadata={"doc": doc, "limits": limits})


@dataclass(frozen=True)
class Parameter:
    """A recipe parameter as the rest of toughen sees it, derived from its declaration."""

    name: str
    default: Any
    kind: type  # float, int, bool or str
    optional: bool  # None is a value (e.g. noise_std: None means eps)
    doc: str
    limits: dict[str, Any]  # for check_number (numbers only)
    recipes: tuple[str, ...]  # the recipes that read it

    def limits_for_check(self) -> dict[str, Any]:
        return {**self.limits, "whole": self.kind is int, "optional": self.optional}


def _kind_of(annotation: Any) -> tuple[type, bool]:
    """(float, True) for ``float | None``; (int, False) for ``int``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return annotation, False


def _declared(recipe: str, declared: type) -> list[Parameter]:
    if not (dataclasses.is_dataclass(declared) and isinstance(declared, type)):
        raise TypeError(f"recipe {recipe!r}: params must be a dataclass of its parameters, got {declared!r}")
    hints = typing.get_type_hints(declared)
    found = []
    for f in dataclasses.fields(declared):
        kind, optional = _kind_of(hints[f.name])
        if kind not in (float, int, bool, str) or f.default is dataclasses.MISSING or "doc" not in f.metadata:
            raise TypeError(f"recipe {recipe!r}: parameter {f.name} must be a float, int, bool or str made "
                            "with param(default, doc, ...)")
        found.append(Parameter(f.name, f.default, kind, optional or f.default is None, f.metadata["doc"],
                               dict(f.metadata["limits"]), (recipe,)))
    return found


# Every declared parameter by name, in the order recipes were registered.
PARAMETERS: dict[str, Parameter] = {}


def declared_parameters() -> dict[str, Parameter]:
    """Every recipe parameter, by name: what TrainConfig, the CLI and the sweep derive from."""
    return dict(PARAMETERS)


@dataclass
class RecipeContext:
    """What a recipe may need for one step. ``eps`` is the current one (after any warm-up)."""

    eps: float
    norm: str = "linf"
    ramp: float = 1.0  # how far the eps warm-up has come: eps / the run's eps (1 without a warm-up)
    steps: int = 10
    step_size: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    # The recipes' own parameters by name, flat as in TrainConfig (the loop gives them all, since the
    # guard may switch recipes); a recipe reads its own with params_for. Missing ones take their defaults.
    params: dict[str, Any] = field(default_factory=dict)
    generator: torch.Generator | None = None
    # Backward + optimizer step, for recipes that take their own (free, atta_free).
    update: Callable[[torch.Tensor], None] | None = None
    # What a recipe carries from one batch to the next (free's perturbation); checkpointed.
    state: dict[str, Any] = field(default_factory=dict)
    # Which training examples the batch's rows are (their dataset indices) and how many there are,
    # for a recipe that remembers each example from one epoch to the next (atta, atta_free).
    index: torch.Tensor | None = None
    train_size: int | None = None
    # Label smoothing of the training loss's cross-entropy (never of an attack's loss): the weight
    # moved from the true class to a uniform target, as torch's cross_entropy(label_smoothing=...)
    label_smoothing: float = 0.0
    # BatchNorm while the training attack is crafted: "train" (batch statistics; each attack pass
    # also moves the running averages) or "eval" (the running statistics, left as they are)
    attack_bn: str = "train"

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss's cross-entropy, with the run's label smoothing."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def params_for(self, declared: type[P]) -> P:
        """A recipe's parameters: its dataclass filled from ``params`` (defaults for the rest)."""
        names = {f.name for f in dataclasses.fields(declared)}
        return declared(**{k: v for k, v in self.params.items() if k in names})

    @contextlib.contextmanager
    def crafting(self, model: nn.Module) -> Iterator[None]:
        """The passes inside the block only look for attack points: with ``attack_bn="eval"`` the
        model's BatchNorm layers use their running statistics there and leave them unchanged (Pang
        et al. 2021, "Bag of Tricks for Adversarial Training"); every other layer keeps its mode."""
        if self.attack_bn != "eval":
            yield
            return
        switched = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        for m in switched:
            m.eval()
        try:
            yield
        finally:
            for m in switched:
                m.train()

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training attack: PGD from a random start, last iterate (as in Madry et al.)."""
        if self.eps == 0:
            return x
        step_size = self.step_size if self.step_size is not None else threat.default_step_size(self.eps, self.steps)
        with self.crafting(model):
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
    # The same loss on the same attack points, computed again with the model's weights as they are
    # when it is called: what --awp trains on after perturbing the weights (toughen.train.awp).
    recompute: Callable[[], torch.Tensor] | None = None


Recipe = Callable[[nn.Module, torch.Tensor, torch.Tensor, RecipeContext], StepOutput]
RECIPES: Registry[Recipe] = Registry("recipe")


@dataclass(frozen=True)
class RecipeTraits:
    """What the rest of toughen needs to know of a recipe, declared where it is registered.

    parameters: the names of its own parameters (its params dataclass), the TrainConfig keys only
        this recipe reads; a sweep varies them only for it and the report shows them next to its
        name (every other key applies to all recipes).
    single_step: one gradient computation per attack step; the catastrophic-overfitting guard
        (toughen.train.guard) watches it.
    per_example: it keeps one perturbation per training example between epochs (in ctx.state),
        so it cannot take random crops, flips or torchrun.
    awp: its StepOutput carries ``recompute``, so ``--awp`` (adversarial weight perturbation,
        toughen.train.awp) can perturb the weights against its loss and train at them.
    """

    parameters: tuple[str, ...] = ()
    single_step: bool = False
    per_example: bool = False
    awp: bool = False


TRAITS: dict[str, RecipeTraits] = {}


def register_recipe(name: str, *, params: type | None = None, single_step: bool = False,
                    per_example: bool = False, awp: bool = False) -> Callable[[Recipe], Recipe]:
    """Register a recipe under ``name``, with the dataclass of its own parameters (``params``,
    fields made with :func:`param`) and its traits (:class:`RecipeTraits`), in one place. Two
    recipes may share a parameter (trades and mart read beta) if they declare it alike."""
    found = _declared(name, params) if params is not None else []
    for p in found:
        known = PARAMETERS.get(p.name)
        if known is not None and (known.default, known.kind, known.optional, known.limits) != (
                p.default, p.kind, p.optional, p.limits):
            raise ValueError(f"recipe {name!r} declares parameter {p.name} unlike {', '.join(known.recipes)} does")
    add = RECIPES.register(name)

    def register(fn: Recipe) -> Recipe:
        add(fn)
        for p in found:
            known = PARAMETERS.get(p.name)
            PARAMETERS[p.name] = dataclasses.replace(p, recipes=(known.recipes if known else ()) + (name,))
        TRAITS[name] = RecipeTraits(tuple(p.name for p in found), single_step, per_example, awp)
        return fn

    return register


def unregister_recipe(name: str) -> None:
    """Take a recipe out of the registry, with the parameters only it declared (for tests that
    register one of their own)."""
    RECIPES.unregister(name)
    TRAITS.pop(name, None)
    for pname, p in list(PARAMETERS.items()):
        if name in p.recipes:
            rest = tuple(r for r in p.recipes if r != name)
            if rest:
                PARAMETERS[pname] = dataclasses.replace(p, recipes=rest)
            else:
                del PARAMETERS[pname]


def traits(recipe: str) -> RecipeTraits:
    """The traits of a registered recipe (none for an unregistered name)."""
    return TRAITS.get(recipe, RecipeTraits())


def list_recipes() -> list[str]:
    return RECIPES.names()


def awp_recipes() -> list[str]:
    """The registered recipes that ``--awp`` applies to (trait ``awp``)."""
    return [name for name in RECIPES.names() if traits(name).awp]


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
