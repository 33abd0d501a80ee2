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

from toughen.text.attacks import gradient as _gradient  # noqa: F401  (registers the attacks)
from toughen.text.attacks import obfuscate as _obfuscate  # noqa: F401
from toughen.text.attacks import substitute as _substitute  # noqa: F401
from toughen.text.attacks._registry import DISCRETE, TEXT_ATTACKS, TextAttack, TextAttackResult
from toughen.text.attacks.gradient import embed_pgd, embedding_pgd, hotflip
from toughen.text.attacks.obfuscate import char_obfuscate
from toughen.text.attacks.substitute import word_substitute


def list_text_attacks() -> list[str]:
    return TEXT_ATTACKS.names()


def get_text_attack(name: str) -> TextAttack:
    return TEXT_ATTACKS.get(name)


__all__ = [
    "DISCRETE", "TEXT_ATTACKS", "TextAttack", "TextAttackResult", "char_obfuscate", "embed_pgd", "embedding_pgd",
    "get_text_attack", "hotflip", "list_text_attacks", "word_substitute",
]
