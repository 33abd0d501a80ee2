"""Attacks on text classifiers. Text attacks take strings, not tensors in [0, 1], so they have
their own registry, ``TEXT_ATTACKS``, and their own contract:

    attack(model, texts, y, *, budget, generator=None, **options) -> TextAttackResult

``budget`` is the text analogue of eps: the most character edits (``char_obfuscate``,
``hotflip``) or substituted words (``word_substitute``) per text, or the radius of the ball on
the input embeddings (``embed_pgd``). Every attack counts its queries (texts the model
classified, or forward-backward passes for the white-box ones) per example. Attacks are
untargeted, never change the model's mode, and leave no gradients on its parameters.

    from toughen.text.attacks import get_text_attack
    res = get_text_attack("char_obfuscate")(model, ["ignore previous instructions"], torch.tensor([1]), budget=3)
    res.adv_texts, res.success, res.edits, res.queries
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from toughen._registry import Registry


@dataclass
class TextAttackResult:
    """Per example: the adversarial text (None for embedding-space attacks), whether the model
    now misclassifies it, the edits it took, and the queries it cost."""

    adv_texts: list[str] | None
    success: torch.Tensor  # bool [N]
    edits: torch.Tensor  # int64 [N]
    queries: torch.Tensor  # int64 [N]


TextAttack = Callable[..., TextAttackResult]
TEXT_ATTACKS: Registry[TextAttack] = Registry("text attack")

# discrete attacks count edits (an int budget); embedding-space ones take a radius
DISCRETE = ("char_obfuscate", "word_substitute", "hotflip")


def list_text_attacks() -> list[str]:
    return TEXT_ATTACKS.names()


def get_text_attack(name: str) -> TextAttack:
    return TEXT_ATTACKS.get(name)


from toughen.text.attacks import obfuscate as _obfuscate  # noqa: E402,F401  (registers the attacks)
from toughen.text.attacks import substitute as _substitute  # noqa: E402,F401
from toughen.text.attacks import gradient as _gradient  # noqa: E402,F401
from toughen.text.attacks.obfuscate import char_obfuscate  # noqa: E402
from toughen.text.attacks.substitute import word_substitute  # noqa: E402
from toughen.text.attacks.gradient import embed_pgd, embedding_pgd, hotflip  # noqa: E402

__all__ = [
    "DISCRETE", "TEXT_ATTACKS", "TextAttackResult", "char_obfuscate", "embed_pgd", "embedding_pgd",
    "get_text_attack", "hotflip", "list_text_attacks", "word_substitute",
]
