"""A binary detector at its operating point: ROC AUC, the detection rate at a false-positive budget,
and how often an attack evades detection at that threshold.

A deployed detector (a prompt-injection or moderation classifier) does not run at argmax: its owner
picks the threshold from a false-positive budget, for example "at most 1% of benign traffic
flagged". The numbers that matter are then the detection rate at that threshold and the evasion
rate of an attacker aiming below it, not accuracy at 0.5.

- The score is the log-odds of the positive class, ``z_pos - z_neg`` (monotone in its probability).
- The threshold is chosen on the validation split, never the test split: the lowest score that
  flags at most ``fpr`` of the validation negatives. The test split then reports its own false
  positive rate at that threshold, the detection rate (true positive rate), and the ROC AUC.
- Evasion at the threshold: the attack runs against :class:`AtThreshold`, the model with the
  positive logit shifted by the threshold, so its argmax is the thresholded decision and the attack
  pursues exactly "score below the threshold". Of the test positives detected at the threshold,
  the fraction the attack pushes below it within its budget is the evasion rate.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from toughen.errors import ToughenUsageError
from toughen.text.models import predict


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic over n_pos * n_neg)."""
    scores, positive = scores.double().flatten(), positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # average ranks (1-based) with ties sharing the mean rank of their group
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def threshold_at_fpr(negative_scores: torch.Tensor, fpr: float) -> float:
    """A threshold t that flags (score >= t) at most ``fpr`` of the negatives and the fewest
    positives: the midpoint between the (k+1)-th highest negative score, k = floor(fpr * n), and the
    next higher one (a little above it when there is none). A midpoint rather than the score
    itself keeps the decision away from ties and from the rounding of the model's own precision."""
    if not 0 <= fpr < 1:
        raise ToughenUsageError(f"the false-positive budget must be in [0, 1), got {fpr}")
    s = negative_scores.double().flatten().sort(descending=True).values
    if len(s) == 0:
        raise ToughenUsageError("no negative examples to choose a threshold from")
    edge = s[int(fpr * len(s))]  # this score and every one below stays unflagged
    higher = s[s > edge]
    if len(higher):
        return float((edge + higher.min()) / 2)
    return float(edge + 1e-3 * max(1.0, abs(float(edge))))


def detector_scores(model: nn.Module, texts: Sequence[str], positive: int = 1) -> torch.Tensor:
    """The log-odds score of the ``positive`` class for each text, ``z_pos - z_neg``, for a binary
    detector."""
    logits = predict(model, list(texts)).double().cpu()
    if logits.shape[1] != 2:
        raise ToughenUsageError(f"operating-point metrics are for binary detectors; this model has "
                                f"{logits.shape[1]} classes")
    others = logits.clone()
    others[:, positive] = float("-inf")
    return logits[:, positive] - others.max(1).values


class AtThreshold(nn.Module):
    """``model`` deciding at ``threshold`` instead of at argmax: the positive class's logit minus
    the threshold, so a text is classified positive exactly when its score is at least the
    threshold. The attacks use it unchanged (``encode``, ``embed``, ``classify`` and the other
    attributes pass through to the model)."""

    def __init__(self, model: nn.Module, threshold: float, positive: int = 1):
        super().__init__()
        self.inner = model
        self.threshold = float(threshold)
        self.positive = positive

    def _shift(self, logits: torch.Tensor) -> torch.Tensor:
        offset = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        offset[self.positive] = -self.threshold
        return logits + offset

    def forward(self, ids, mask):
        return self._shift(self.inner(ids, mask))

    def classify(self, emb, mask):
        return self._shift(self.inner.classify(emb, mask))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def operating_point(
    model: nn.Module,
    val_texts: Sequence[str],
    y_val: torch.Tensor,
    test_texts: Sequence[str],
    y_test: torch.Tensor,
    *,
    attack: str | None = None,
    budget: float | None = None,
    options: dict[str, Any] | None = None,
    fpr: float = 0.01,
    positive: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """ROC AUC on the test split, the threshold for ``fpr`` chosen on the validation split, the
    test split's detection rate and false-positive rate there, and (when ``attack`` is given) the
    rate at which the attack evades detection at that threshold.

    Returns a JSON-serializable dict; ``evasion_rate_at_threshold`` is over the test positives
    detected at the threshold (``n_detected``)."""
    from toughen.text.evaluation import evaluate_text_attack

    y_val, y_test = y_val.cpu().long(), y_test.cpu().long()
    val_scores = detector_scores(model, val_texts, positive)
    if not (y_val != positive).any():
        raise ToughenUsageError("the validation split has no negative texts to choose the threshold from")
    threshold = threshold_at_fpr(val_scores[y_val != positive], fpr)
    test_scores = detector_scores(model, test_texts, positive)
    is_pos = y_test == positive
    flagged = test_scores >= threshold
    out: dict[str, Any] = {
        "positive_class": positive,
        "fpr_budget": fpr,
        "threshold_log_odds": threshold,
        "roc_auc": roc_auc(test_scores, is_pos),
        "val_fpr": float((val_scores[y_val != positive] >= threshold).double().mean()),
        "test_fpr": float(flagged[~is_pos].double().mean()) if (~is_pos).any() else float("nan"),
        "detection_rate": float(flagged[is_pos].double().mean()) if is_pos.any() else float("nan"),
    }
    if attack is not None:
        detected = (is_pos & flagged).nonzero().flatten().tolist()
        out["attack"], out["budget"], out["n_detected"] = attack, budget, len(detected)
        if detected:
            r = evaluate_text_attack(AtThreshold(model, threshold, positive), [test_texts[i] for i in detected],
                                     y_test[detected], attack, budget=budget, options=options, seed=seed, n_examples=0)
            out["evasion_rate_at_threshold"] = r["attack_success_rate"]
        else:
            out["evasion_rate_at_threshold"] = float("nan")
    return out
