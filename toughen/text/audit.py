"""The audit's checks, where they apply to a text classifier under a discrete attack.

The image audit (toughen.evaluation.audit) asks whether gradients hide adversarial examples. A
text classifier attacked by character edits or word substitutions is attacked without
gradients, so what can mislead the numbers is different: a search that is too weak, a budget
that does not bind, or a model whose outputs change from call to call. The checks here:

- ``deterministic`` and ``outputs_are_logits``: as for images (shared code);
- ``gradients_finite_nonzero``: the cross-entropy's gradient on the input embeddings, which the
  embedding-space attacks and recipes (embed_pgd, FreeLB) follow;
- ``more_search_not_weaker``: the attack with every candidate edit must leave no more texts
  robust than the same attack trying a sample of 8 candidates per step (the text analogue of
  "more iterations must not help the model");
- ``accuracy_falls_with_budget``: robust accuracy at half, once and twice the budget must not
  rise (the analogue of "robust accuracy must fall with eps").

    report = audit_text(model, texts, y, attack="char_obfuscate", budget=5)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from toughen.errors import ToughenUsageError
from toughen.evaluation.audit import make_check, output_checks, pct, verdict_of
from toughen.runs import write_json
from toughen.text.attacks import DISCRETE
from toughen.text.evaluation import evaluate_text_attack
from toughen.text.models import predict
from toughen.text.train import evaluated_threat, load_text_run, load_text_run_data


def audit_text(
    model,
    texts: Sequence[str],
    y: torch.Tensor,
    *,
    attack: str = "char_obfuscate",
    budget: int = 3,
    seed: int = 0,
    tolerance: float = 0.01,
) -> dict[str, Any]:
    """Run the text checks on ``model`` (in eval mode) at ``budget`` edits of ``attack``.

    Returns the image audit's shape: ``{"verdict", "checks", "robust_accuracy", "eps" (the budget),
    "norm": "edits", "attack", "n", "seconds"}``.
    """
    if attack not in DISCRETE:
        raise ToughenUsageError(f"the text audit uses a discrete attack ({', '.join(DISCRETE)}), got {attack!r}")
    if budget < 1:
        raise ToughenUsageError(f"the audit needs a budget of at least 1 edit, got {budget}")
    if len(texts) != len(y) or len(texts) == 0:
        raise ToughenUsageError(f"texts and y must be non-empty and of the same length, got {len(texts)} and {len(y)}")
    start = time.perf_counter()
    texts, y = list(texts), y.cpu().long()
    n = len(texts)
    tol = tolerance + 1.0 / n
    checks = output_checks(predict(model, texts), predict(model, texts))

    # -- the gradient on the input embeddings ---------------------------------------------------
    if hasattr(model, "embed") and hasattr(model, "classify"):
        ids, mask = model.encode(texts[:256])
        emb = model.embed(ids).detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model.classify(emb, mask).float(), y[: len(ids)].to(emb.device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, emb)
        flat = grad.flatten(1)
        nonfinite = (~torch.isfinite(flat)).any(1).float().mean().item()
        zero = (flat == 0).all(1).float().mean().item()
        checks.append(make_check(
            "gradients_finite_nonzero", nonfinite == 0 and zero <= tolerance,
            f"gradient of the cross-entropy on the input embeddings: {pct(zero)} exactly zero, "
            f"{pct(nonfinite)} not finite", zero_fraction=zero, nonfinite_fraction=nonfinite,
        ))

    def robust(k: int, **options: Any) -> float:
        return evaluate_text_attack(model, texts, y, attack, budget=k, options=options, seed=seed,
                                    n_examples=0)["robust_accuracy"]

    acc: dict[str, float] = {}
    full, sampled = robust(budget), robust(budget, max_candidates=8)
    acc[f"{attack}@{budget}"], acc[f"{attack}@{budget} (8 candidates per step)"] = full, sampled
    checks.append(make_check(
        "more_search_not_weaker", full <= sampled + tol,
        f"{attack} at {budget} edits leaves {pct(full)} robust trying every candidate edit, {pct(sampled)} "
        "trying 8 per step" + ("; a wider search should never help the model" if full > sampled + tol else ""),
    ))

    budgets = sorted({max(1, math.ceil(budget / 2)), budget, 2 * budget})
    curve = [{"budget": k, "robust_accuracy": full if k == budget else robust(k)} for k in budgets]
    rises = [(a, b) for a, b in zip(curve, curve[1:]) if b["robust_accuracy"] > a["robust_accuracy"] + tol]
    checks.append(make_check(
        "accuracy_falls_with_budget", not rises,
        f"{attack} robust accuracy at {', '.join(str(c['budget']) for c in curve)} edits: "
        f"{', '.join(pct(c['robust_accuracy']) for c in curve)}" + ("; it rises with the budget" if rises else ""),
        curve=curve,
    ))
    acc["clean"] = (predict(model, texts).argmax(1).cpu() == y).float().mean().item()
    return {"verdict": verdict_of(checks), "checks": checks, "robust_accuracy": acc, "eps": budget, "norm": "edits",
            "attack": attack, "n": n, "seconds": time.perf_counter() - start}




def audit_text_run(run_dir, cfg, *, eps, norm, n, seed, device) -> dict[str, Any]:
    """``toughen audit RUN_DIR`` for a text run (its run kind's audit): at the run's evaluated
    edit budget, with its discrete evaluation attack; writes RUN_DIR/audit.json."""
    if eps is not None or norm is not None:
        raise ToughenUsageError("a text run is audited at its edit budget; --eps and --norm apply to image models")
    if n < 1:
        raise ToughenUsageError(f"--n must be >= 1, got {n}")
    train = cfg["train"]
    attack = train.get("eval_attack", "char_obfuscate")
    # a run measured in embedding space is audited with character edits at its training budget
    budget = evaluated_threat(train) if attack in DISCRETE else train["budget"]
    attack = attack if attack in DISCRETE else "char_obfuscate"
    splits = load_text_run_data(run_dir)
    model = load_text_run(run_dir, device=device)
    report = audit_text(model, splits.x_test[:n], splits.y_test[:n], attack=attack, budget=int(budget), seed=seed)
    report["model"] = str(run_dir)
    write_json(Path(run_dir) / "audit.json", report)
    return report


__all__ = ["audit_text", "audit_text_run"]
