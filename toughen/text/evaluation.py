"""Evaluate a text classifier under a text attack: the numbers `toughen eval` prints for text runs.

Definitions (as in TextAttack, Morris et al. 2020):

- clean_accuracy: fraction of texts classified correctly;
- robust_accuracy: fraction still classified correctly after the attack (a text the model gets
  wrong clean counts as not robust and is not attacked);
- attack_success_rate: of the texts attacked (the correctly classified ones), the fraction the
  attack flipped within its budget;
- mean_edits: edits per successful attack; mean_queries: queries per attacked text;
- per_family (when the texts' families are given): each family's clean and robust accuracy; for
  an injection family of a detector, its clean accuracy is its detection rate.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from toughen.text.attacks import TEXT_ATTACKS
from toughen.text.models import predict


def evaluate_text_attack(
    model,
    texts: Sequence[str],
    y: torch.Tensor,
    attack: str,
    *,
    budget: float,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    n_examples: int = 5,
    families: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Clean and robust accuracy, attack success rate, mean edits and queries, and a few examples;
    with ``families`` (one tag per text) the same accuracies per family.

    Returns a JSON-serializable dict plus ``robust``, the per-example bool mask (a tensor)."""
    fn = TEXT_ATTACKS.get(attack)
    y = y.detach().cpu().long()
    start = time.perf_counter()
    pred = predict(model, list(texts)).argmax(1).cpu() if len(texts) else torch.zeros(0, dtype=torch.long)
    correct = pred == y
    idx = correct.nonzero().flatten().tolist()
    robust = correct.clone()
    generator = torch.Generator().manual_seed(seed)
    success = torch.zeros(0, dtype=torch.bool)
    edits = queries = torch.zeros(0, dtype=torch.long)
    adv_texts = None
    if idx:
        res = fn(model, [texts[i] for i in idx], y[idx], budget=budget, generator=generator, **(options or {}))
        success, edits, queries, adv_texts = res.success.cpu(), res.edits.cpu(), res.queries.cpu(), res.adv_texts
        robust[idx] = ~success
    name = (lambda c: class_names[c]) if class_names else (lambda c: int(c))
    examples = []
    if adv_texts is not None:
        adv_pred = predict(model, adv_texts).argmax(1).cpu() if adv_texts else torch.zeros(0, dtype=torch.long)
        order = sorted(range(len(idx)), key=lambda j: not success[j])  # successes first
        for j in order[:n_examples]:
            examples.append({
                "original": texts[idx[j]], "adversarial": adv_texts[j], "label": name(y[idx[j]].item()),
                "adversarial_prediction": name(adv_pred[j].item()), "edits": int(edits[j]),
                "success": bool(success[j]),
            })
    n_success = int(success.sum())
    by_family = {}
    if families is not None:
        tags = list(families)
        for fam in sorted(set(tags)):
            mask = torch.tensor([t == fam for t in tags])
            by_family[fam] = {"n": int(mask.sum()), "clean_accuracy": correct[mask].float().mean().item(),
                              "robust_accuracy": robust[mask].float().mean().item()}
    return {
        "attack": attack,
        "budget": budget,
        "clean_accuracy": correct.float().mean().item() if len(y) else float("nan"),
        "robust_accuracy": robust.float().mean().item() if len(y) else float("nan"),
        "attack_success_rate": n_success / len(idx) if idx else 0.0,
        "mean_edits": edits[success].float().mean().item() if n_success else 0.0,
        "mean_queries": queries.float().mean().item() if idx else 0.0,
        "n": len(y),
        "n_attacked": len(idx),
        "seconds": time.perf_counter() - start,
        "examples": examples,
        **({"per_family": by_family} if families is not None else {}),
        "robust": robust,
    }
