"""White-box text attacks: HotFlip (discrete flips ranked by the gradient) and PGD on the input
embeddings (continuous)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toughen import threat
from toughen.errors import ToughenUsageError
from toughen.text.attacks._registry import TEXT_ATTACKS, TextAttackResult
from toughen.attacks.losses import margin
from toughen.text.attacks.greedy import as_str, check_budget
from toughen.text.tokenize import clip, to_bytes


def _grad_wrt(loss: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # autograd.grad, not backward: the attack leaves no .grad on the model's parameters
    (g,) = torch.autograd.grad(loss, t)
    return g


@TEXT_ATTACKS.register("hotflip")
def hotflip(
    model,
    texts,
    y: torch.Tensor,
    *,
    budget: int = 3,
    generator: torch.Generator | None = None,
) -> TextAttackResult:
    """HotFlip (Ebrahimi et al. 2018): each step flips the one byte whose replacement most raises
    the loss to first order, ``(e_new - e_old) . dL/de_i``, over every position and every
    printable ASCII byte; at most ``budget`` positions change (each once), so the edit count is
    the number of substituted characters. Only ASCII positions are flipped, so the text stays
    valid UTF-8. Needs a model with ``flip_ids`` (``char_cnn``). Deterministic: ``generator``
    is accepted for the common contract and unused. Queries: one forward-backward per step.
    """
    budget = check_budget(budget)
    if getattr(model, "flip_ids", None) is None or not hasattr(model, "decode"):
        raise ToughenUsageError("hotflip needs a byte-level model such as char_cnn; use char_obfuscate for this one")
    dev = model.flip_ids.device
    y = y.detach().to(dev).long()
    data = [bytearray(to_bytes(as_str(t))) for t in texts]
    n = len(data)
    flipped = [set() for _ in range(n)]
    queries = torch.zeros(n, dtype=torch.long)
    edits = torch.zeros(n, dtype=torch.long)
    success = torch.zeros(n, dtype=torch.bool)
    weight = model.embedding.weight
    cand = weight[model.flip_ids].detach()  # [V, D]
    for step in range(budget + 1):
        active = [k for k in range(n) if not success[k]]
        if not active:
            break
        ids, mask = model.encode([bytes(data[k]) for k in active])
        emb = model.embed(ids).detach().requires_grad_(True)
        logits = model.classify(emb, mask)
        ya = y[active]
        success[active] = (margin(logits.detach(), ya) > 0).cpu()
        queries[active] += 1
        if step == budget:
            break
        g = _grad_wrt(F.cross_entropy(logits, ya, reduction="sum"), emb)  # [B, L, D]
        # gain[b, i, v] = (cand_v - e_{b,i}) . g_{b,i}
        gain = torch.einsum("vd,bld->blv", cand, g) - (emb.detach() * g).sum(-1, keepdim=True)
        byte = ids - 1
        allowed = mask & (byte < 128) & (byte >= 0)
        for row, k in enumerate(active):
            keep = clip(list(range(len(data[k]))), model.max_len)  # clipped position -> full position
            for i in flipped[k]:
                pos = keep.index(i) if i in keep else None
                if pos is not None:
                    allowed[row, pos] = False
        gain = gain.masked_fill(~allowed[..., None], float("-inf"))
        gain = gain.masked_fill(model.flip_ids[None, None, :] == ids[..., None], float("-inf"))  # no-op flips
        best = gain.flatten(1).argmax(1)
        for row, k in enumerate(active):
            if success[k] or not torch.isfinite(gain[row].flatten()[best[row]]):
                continue
            pos, v = divmod(best[row].item(), cand.shape[0])
            keep = clip(list(range(len(data[k]))), model.max_len)
            full = keep[pos]
            data[k][full] = model.flip_ids[v].item() - 1
            flipped[k].add(full)
            edits[k] += 1
    adv = [bytes(d).decode("utf-8", errors="surrogateescape") for d in data]
    return TextAttackResult(adv, success, edits, queries)


def embedding_pgd(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "l2",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD on the input embeddings (Madry et al. 2018, in the embedding space as in Miyato et al.
    2017 and Zhu et al. 2020): the perturbation delta [B, L, D] of ``model.embed(ids)`` that
    maximizes the cross-entropy, within ``||delta||_2 <= eps`` per text (``norm="l2"``) or
    ``|delta| <= eps`` per coordinate (``"linf"``). Padding positions stay unperturbed.
    Returns delta, detached."""
    threat.check_norm(norm)
    if eps < 0:
        raise ToughenUsageError(f"embedding eps must be >= 0, got {eps}")
    step_size = step_size if step_size is not None else threat.default_step_size(eps, steps)
    emb = model.embed(ids).detach()
    m = mask[..., None].to(emb.dtype)
    # Embeddings have no box, only the ball, so there is no clamp_to_bounds (x + d - x would
    # only add rounding error).
    if random_start and eps > 0:
        delta = threat.project(threat.random_start(emb, eps, norm, (-1e30, 1e30), generator), eps, norm) * m
    else:
        delta = torch.zeros_like(emb)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model.classify(emb + delta, mask), y)
        g = _grad_wrt(loss, delta) * m
        delta = threat.project(delta.detach() + step_size * threat.ascent_direction(g, norm), eps, norm) * m
    return delta.detach()


@TEXT_ATTACKS.register("embed_pgd")
def embed_pgd(
    model,
    texts,
    y: torch.Tensor,
    *,
    budget: float = 1.0,
    generator: torch.Generator | None = None,
    norm: str = "l2",
    steps: int = 10,
    step_size: float | None = None,
    batch_size: int = 256,
) -> TextAttackResult:
    """Embedding-space PGD as an evaluation: ``budget`` is the radius eps of the ball on the input
    embeddings (per text for L2). A model robust here is robust to every discrete edit whose
    embeddings land inside the ball; the converse does not hold. No adversarial text exists, so
    ``adv_texts`` is None and ``edits`` is 0. Queries: ``steps + 1`` forward passes per text."""
    if isinstance(budget, bool) or budget < 0:
        raise ToughenUsageError(f"embed_pgd's budget is a radius >= 0, got {budget!r}")
    success = []
    for start in range(0, len(texts), batch_size):
        ids, mask = model.encode(list(texts[start : start + batch_size]))
        yb = y[start : start + batch_size].to(ids.device).long()
        delta = embedding_pgd(model, ids, mask, yb, eps=float(budget), norm=norm, steps=steps, step_size=step_size,
                              generator=generator)
        with torch.no_grad():
            success.append((margin(model.classify(model.embed(ids) + delta, mask), yb) > 0).cpu())
    success_t = torch.cat(success) if success else torch.zeros(0, dtype=torch.bool)
    n = len(texts)
    return TextAttackResult(None, success_t, torch.zeros(n, dtype=torch.long), torch.full((n,), steps + 1))
