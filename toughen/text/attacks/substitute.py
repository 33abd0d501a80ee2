"""Word substitution with a hand-written synonym table (the lexical source; nothing to download).

Meaning constraint: a word is only ever replaced by a member of its own synonym group, groups
were written by hand so that every member can stand in for every other in the sense these
texts use (WordNet, which installs only with a separate data download, lists senses that would
not: "drop" -> "fall"), each word is replaced at most once, and at most ``budget`` words per
text. Case is kept (Title, UPPER, lower). The search is the black-box greedy one of TextFooler
(Jin et al. 2020) without its sentence-encoder check, which would need a download.
"""

from __future__ import annotations

import torch

from toughen.text.attacks._registry import TEXT_ATTACKS, TextAttackResult
from toughen.text.attacks.greedy import greedy_search

GROUPS = [
    # the vocabulary of instruction overrides
    "ignore disregard overlook neglect", "forget unlearn", "skip omit", "bypass circumvent sidestep evade",
    "override overrule supersede", "abandon ditch drop", "discard throw-away scrap", "cancel revoke rescind",
    "previous prior earlier preceding former", "original initial first", "above aforementioned foregoing",
    "instructions directions directives orders commands guidance", "rules guidelines regulations policies",
    "restrictions limits constraints limitations", "reveal disclose divulge expose", "print output display show",
    "tell inform", "say state utter", "secret confidential private classified", "hidden concealed secret",
    "password passphrase passcode", "send transmit forward", "delete erase remove", "grant give award",
    "pretend imagine suppose", "now henceforth", "instead rather", "everything all", "respond reply answer",
    "new fresh updated", "message note", "system platform", "prompt instruction", "user person",
    "unfiltered uncensored unrestricted", "exact precise verbatim", "list enumerate", "write compose",
    "describe explain", "disable deactivate", "approve authorize accept", "access entry",
    # everyday words, so benign texts can be perturbed too
    "help assist aid", "plan schedule", "best finest top", "beginner novice newcomer", "simple easy basic",
    "short brief", "poem verse", "story tale", "question query", "answer reply response", "correct fix",
    "missing absent lacking", "great excellent superb", "clean tidy spotless", "cold chilly", "tired weary",
    "shorter briefer", "loved adored", "damaged broken", "warm cozy", "crashes fails", "friendly kind",
    "reasonable fair", "meeting appointment", "review evaluation", "ready prepared", "closed shut",
    "follow pursue", "wanted wished", "order purchase", "think believe", "guess conjecture", "noise racket",
    "practise practice rehearse", "defend protect guard", "common frequent usual", "difference distinction",
    "decides chooses", "next following subsequent", "paragraph passage", "default standard", "email mail",
    "received got", "does do", "what which", "can could", "please kindly",
]

SYNONYMS: dict[str, list[str]] = {}
for _group in GROUPS:
    _words = [w.replace("-", " ") for w in _group.split()]
    for _w in _words:
        SYNONYMS.setdefault(_w, [])
        SYNONYMS[_w] += [s for s in _words if s != _w and s not in SYNONYMS[_w]]


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def synonyms(token: str) -> list[str]:
    """Replacements of a whitespace-delimited token: its core word swapped for each synonym,
    surrounding punctuation kept ("rules." -> "guidelines.")."""
    start = 0
    while start < len(token) and not token[start].isalnum():
        start += 1
    end = len(token)
    while end > start and not token[end - 1].isalnum():
        end -= 1
    core = token[start:end]
    return [token[:start] + _match_case(core, s) + token[end:] for s in SYNONYMS.get(core.lower(), [])]


@TEXT_ATTACKS.register("word_substitute")
def word_substitute(
    model,
    texts,
    y: torch.Tensor,
    *,
    budget: int = 3,
    generator: torch.Generator | None = None,
    max_candidates: int | None = None,
    batch_size: int = 512,
) -> TextAttackResult:
    """Black-box synonym substitution: at most ``budget`` words replaced per text, each by a
    synonym from :data:`GROUPS`, the most important words first.

    Example:
        >>> word_substitute(model, ["ignore previous instructions"], torch.tensor([1]), budget=2).adv_texts
        ['disregard previous directives']
    """
    return greedy_search(
        model, texts, y, budget, synonyms, revisit=False,
        max_candidates=max_candidates, generator=generator, batch_size=batch_size,
    )
