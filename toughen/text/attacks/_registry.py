"""The text-attack registry and result type, a leaf that the attack modules register into."""

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
