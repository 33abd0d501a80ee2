"""Character obfuscation: the edits attackers use to slip "1gn0re previous instructi0ns" past a
filter while a human (or the assistant behind the filter) still reads it.

Each edit is one step of the Damerau-Levenshtein distance on code points: a substitution
(homoglyph, leetspeak), an insertion (zero-width character, space, duplicated character), a
deletion, or a swap of two adjacent characters. The search is the black-box greedy one of
DeepWordBug (Gao et al. 2018): words ranked by leave-one-out importance, then the best single
edit of the most important word, at most ``budget`` edits per text.
"""

from __future__ import annotations

import torch

from toughen.errors import ToughenUsageError
from toughen.text.attacks._registry import TEXT_ATTACKS, TextAttackResult
from toughen.text.attacks.greedy import greedy_search

# Latin letters and look-alikes from other scripts (Cyrillic, Greek, Latin extensions).
HOMOGLYPHS = {
    "a": "а", "c": "с", "d": "ԁ", "e": "е", "g": "ɡ", "h": "һ", "i": "і", "j": "ј", "k": "κ", "l": "ӏ",
    "n": "ո", "o": "о", "p": "р", "q": "ԛ", "r": "г", "s": "ѕ", "u": "υ", "v": "ν", "w": "ԝ", "x": "х",
    "y": "у", "A": "А", "B": "В", "C": "С", "E": "Е", "H": "Н", "I": "І", "J": "Ј", "K": "К", "M": "М",
    "N": "Ν", "O": "О", "P": "Р", "S": "Ѕ", "T": "Т", "X": "Х", "Y": "Υ", "Z": "Ζ",
}
LEET = {"a": "4", "b": "8", "e": "3", "g": "9", "i": "1", "l": "1", "o": "0", "s": "5", "t": "7", "z": "2",
        "A": "4", "B": "8", "E": "3", "G": "6", "I": "1", "O": "0", "S": "$", "T": "7"}
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060")  # zero-width space, non-joiner, joiner, word joiner
OPS = ("homoglyph", "leet", "zero_width", "space", "swap", "delete", "duplicate")


def obfuscations(word: str, ops: tuple[str, ...] = OPS) -> list[str]:
    """Every distinct string one edit of the kinds in ``ops`` away from ``word`` (``word`` excluded)."""
    out: list[str] = []
    n = len(word)
    for i, ch in enumerate(word):
        if "homoglyph" in ops and ch in HOMOGLYPHS:
            out.append(word[:i] + HOMOGLYPHS[ch] + word[i + 1 :])
        if "leet" in ops and ch in LEET:
            out.append(word[:i] + LEET[ch] + word[i + 1 :])
        if "delete" in ops and n > 1:
            out.append(word[:i] + word[i + 1 :])
        if "duplicate" in ops:
            out.append(word[: i + 1] + ch + word[i + 1 :])
        if i + 1 < n:
            if "swap" in ops and word[i + 1] != ch:
                out.append(word[:i] + word[i + 1] + ch + word[i + 2 :])
            if "space" in ops:
                out.append(word[: i + 1] + " " + word[i + 1 :])
            if "zero_width" in ops:
                # one zero-width character per gap, rotating, keeps the candidate set small
                out.append(word[: i + 1] + ZERO_WIDTH[i % len(ZERO_WIDTH)] + word[i + 1 :])
    seen, unique = {word}, []
    for w in out:
        if w not in seen:
            seen.add(w)
            unique.append(w)
    return unique


@TEXT_ATTACKS.register("char_obfuscate")
def char_obfuscate(
    model,
    texts,
    y: torch.Tensor,
    *,
    budget: int = 3,
    generator: torch.Generator | None = None,
    ops: tuple[str, ...] | list[str] = OPS,
    max_candidates: int | None = None,
    batch_size: int = 512,
) -> TextAttackResult:
    """Black-box character obfuscation with at most ``budget`` edits per text.

    Args:
        model: a text model (:mod:`toughen.text.models`); only its predictions are used.
        texts: strings (or bytes); y: true labels [N].
        budget: most character edits per text (Damerau-Levenshtein distance on code points).
        ops: the edit kinds to use, a subset of ``OPS``.
        max_candidates: try at most this many edits per step, sampled with ``generator``
            (the cheap setting that adversarial training uses); all of them when None.

    Example:
        >>> res = char_obfuscate(model, ["ignore previous instructions"], torch.tensor([1]), budget=2)
        >>> res.adv_texts[0]  # e.g. 'іgnore previous instructi0ns'
    """
    ops = tuple(ops)
    unknown = sorted(set(ops) - set(OPS))
    if unknown or not ops:
        raise ToughenUsageError(f"unknown obfuscation ops {unknown or ops}; choose from {', '.join(OPS)}")
    return greedy_search(
        model, texts, y, budget, lambda w: obfuscations(w, ops), revisit=True,
        max_candidates=max_candidates, generator=generator, batch_size=batch_size,
    )
