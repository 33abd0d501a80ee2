"""Per-example attack losses, one vocabulary and one sign convention: higher is worse for the
model. Every attack (pgd, apgd, square, the text attacks) takes its losses from here; an attack
that minimizes (Square's random search) minimizes minus these.

- ``ce``: the cross-entropy of the true class.
- ``margin``: max_{j != y} z_j - z_y (Carlini and Wagner 2017), positive exactly when y is not the
  top class.
- ``dlr``: the difference-of-logits ratio (Croce and Hein 2020), the margin divided by a spread of
  the top logits, so that rescaling the logits cannot hide the model behind flat gradients.

Targeted (``target`` given), each becomes the quantity that rises as the prediction moves to the
target: minus the loss of the target class for ce and margin, DLR's own targeted form for dlr.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from toughen.errors import ToughenUsageError

LOSSES = ("ce", "margin", "dlr")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin max_{j != y} z_j - z_y: positive exactly when y is not the top class."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(dim=1) - true


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """The difference-of-logits-ratio loss of Croce and Hein (2020), higher = worse for the model.

    Untargeted: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), with z_pi the sorted logits.
    Targeted at t: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2). Dividing by a difference of
    logits makes the loss invariant to shifting and rescaling the logits, so a model whose logits
    are multiplied by a large constant (a saturated softmax) cannot hide behind flat gradients.
    """
    z = logits.float()
    k = z.shape[1]
    if k < (4 if target is not None else 3):
        raise ToughenUsageError(
            f"the DLR loss needs at least {4 if target is not None else 3} classes, the model has {k}; "
            "use loss='ce'"
        )
    srt = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    if target is None:
        others = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return -(z_y - others) / (srt[:, 0] - srt[:, 2] + 1e-12)
    z_t = z.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


def _of_the_target(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """A label loss as an attack loss: of y untargeted, minus that of the target when targeted."""
    return lambda logits, y, target: fn(logits, y) if target is None else -fn(logits, target)


_LOSS_FUNCTIONS = {"ce": _of_the_target(cross_entropy), "margin": _of_the_target(margin), "dlr": dlr}


def check_loss(loss: str, allowed: tuple[str, ...] = LOSSES, attack: str = "attack") -> str:
    """``loss`` if it is one of ``allowed`` (an attack's subset of LOSSES), else a usage error."""
    if loss not in allowed:
        raise ToughenUsageError(f"unknown {attack} loss {loss!r}; choose one of: {', '.join(allowed)}")
    return loss


def loss_value(loss: str, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The per-example loss ``loss`` (higher = worse for the model; see the module docstring)."""
    return _LOSS_FUNCTIONS[check_loss(loss)](logits, y, target)


def objective(loss: str, y: torch.Tensor, target: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-example quantity an attack maximizes, as a function of the logits alone."""
    check_loss(loss)
    return lambda logits: _LOSS_FUNCTIONS[loss](logits, y, target)


def is_successful(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Per-example bool: misclassified (untargeted) or classified as the target (targeted)."""
    pred = logits.argmax(dim=1)
    return pred != y if target is None else pred == target
