"""The black-box greedy search that char_obfuscate and word_substitute share.

1. Rank the words of each text by importance: how much the margin loss (max_{j != y} z_j - z_y,
   :func:`toughen.attacks.losses.margin`) rises when the word is deleted (leave-one-out, as in
   DeepWordBug, Gao et al. 2018, and TextFooler, Jin et al. 2020). One query per word.
2. For the most important word not yet visited, try every candidate edit of it (at most
   ``max_candidates``, sampled with ``generator``), keep the one that raises the margin most.
   Each kept edit costs 1 of the budget. Stop at a misclassification or when the budget is spent.

All texts are searched at once: each step classifies the candidates of every unfinished text in
one batched call, so the cost is a few model calls per step, not per text.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from toughen.attacks.losses import margin
from toughen.errors import ToughenUsageError
from toughen.text.attacks._registry import TextAttackResult
from toughen.text.models import predict

_SPLIT = re.compile(r"(\s+)")


def check_budget(budget) -> int:
    if isinstance(budget, bool) or not float(budget).is_integer() or budget < 0:
        raise ToughenUsageError(f"--budget is a number of edits, a whole number >= 0; got {budget!r}")
    return int(budget)


def as_str(text: str | bytes) -> str:
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="surrogateescape")  # re-encodes to the same bytes
    return text


def greedy_search(
    model,
    texts: Sequence[str | bytes],
    y: torch.Tensor,
    budget: int,
    candidates: Callable[[str], list[str]],
    *,
    revisit: bool,
    max_candidates: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> TextAttackResult:
    """Greedy word-by-word search; ``candidates(word)`` lists every word one edit away.

    ``revisit``: after the last word, start again from the most important one (character edits
    can stack up in one word; a word substitution cannot)."""
    budget = check_budget(budget)
    y = y.detach().cpu().long()
    n = len(texts)
    tokens = [_SPLIT.split(as_str(t)) for t in texts]  # words at even indices, whitespace at odd
    current = ["".join(t) for t in tokens]
    logits = predict(model, current, batch_size).cpu()
    best = margin(logits, y)
    queries = torch.ones(n, dtype=torch.long)
    edits = torch.zeros(n, dtype=torch.long)
    word_idx = [[i for i in range(0, len(t), 2) if t[i]] for t in tokens]

    # 1. importance: the margin with each word deleted (> 0: misclassified)
    probes, owners = [], []
    for k in range(n):
        if best[k] > 0 or budget == 0:
            continue
        for i in word_idx[k]:
            probes.append("".join(tokens[k][:i] + tokens[k][i + 1 :]))
            owners.append(k)
    order: list[list[int]] = [[] for _ in range(n)]
    if probes:
        m = margin(predict(model, probes, batch_size).cpu(), y[owners])
        drops: list[list[float]] = [[] for _ in range(n)]
        for k, v in zip(owners, m.tolist()):
            drops[k].append(v)
            queries[k] += 1
        for k in range(n):
            if drops[k]:
                ranked = sorted(range(len(drops[k])), key=lambda j: -drops[k][j])  # highest margin first
                order[k] = [word_idx[k][j] for j in ranked]

    # 2. greedy edits, the most important word first
    for step in range(budget):
        probes, owners, slots = [], [], []
        for k in range(n):
            if best[k] > 0 or not order[k] or (not revisit and step >= len(order[k])):
                continue
            i = order[k][step % len(order[k])]
            cands = candidates(tokens[k][i])
            if max_candidates is not None and len(cands) > max_candidates:
                pick = torch.randperm(len(cands), generator=generator)[:max_candidates].tolist()
                cands = [cands[j] for j in pick]
            for c in cands:
                probes.append("".join(tokens[k][:i]) + c + "".join(tokens[k][i + 1 :]))
                owners.append(k)
                slots.append((i, c))
        if not probes:
            break
        m = margin(predict(model, probes, batch_size).cpu(), y[owners]).tolist()
        chosen: dict[int, tuple[float, tuple[int, str]]] = {}
        for k, v, slot in zip(owners, m, slots):
            queries[k] += 1
            if k not in chosen or v > chosen[k][0]:
                chosen[k] = (v, slot)
        for k, (v, (i, c)) in chosen.items():
            tokens[k][i] = c
            best[k] = v
            edits[k] += 1
    return TextAttackResult(["".join(t) for t in tokens], best > 0, edits, queries)
