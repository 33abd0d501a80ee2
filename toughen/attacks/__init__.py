"""Attacks: plain functions ``attack(model, x, y, *, eps, norm, bounds, generator, ...) -> x_adv``.

Every registered attack takes those keyword arguments, so the evaluation code and the contract
tests can call any of them the same way; :class:`Attack` carries one attack's own settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from toughen._registry import Registry
from toughen.attacks.losses import margin
from toughen.attacks.apgd import apgd
from toughen.attacks.fab import fab
from toughen.attacks.pgd import fgsm, pgd
from toughen.attacks.square import square

ATTACKS: Registry[Callable[..., torch.Tensor]] = Registry("attack")
ATTACKS.register("fgsm")(fgsm)
ATTACKS.register("pgd")(pgd)
ATTACKS.register("apgd")(apgd)
ATTACKS.register("square")(square)
ATTACKS.register("fab")(fab)


def list_attacks() -> list[str]:
    return ATTACKS.names()


def get_attack(name: str) -> Callable[..., torch.Tensor]:
    return ATTACKS.get(name)


@dataclass(frozen=True)
class Attack:
    """A registered attack with its own settings saved, e.g. ``Attack("pgd", {"steps": 20})``.

    Calling it runs the attack function; the threat model (eps, norm, bounds) is given per call
    so one list of attacks serves any eps.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ATTACKS.get(self.name)  # fail early, listing the choices

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}({opts})" if opts else self.name

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **threat: Any) -> torch.Tensor:
        return ATTACKS.get(self.name)(model, x, y, **threat, **self.options)


__all__ = ["Attack", "ATTACKS", "apgd", "fab", "fgsm", "get_attack", "list_attacks", "margin", "pgd", "square"]
