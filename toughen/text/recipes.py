"""Adversarial-training recipes for text: each turns a batch of texts into the loss to minimize.

    recipe(model, texts, y, ctx) -> StepOutput      (StepOutput from toughen.train.recipes)

Drop one into your own loop::

    ctx = TextRecipeContext(budget=3, lam=1.0)
    out = TEXT_RECIPES.get("text_augment")(model, texts, y, ctx)
    out.loss.backward(); optimizer.step()

The loop (:mod:`toughen.text.train`) sets the model's mode; recipes leave it as they found it.
Attacks inside a recipe see the model in training mode (dropout on), as in FreeLB, except
text_augment's with ``attack_eval_mode`` (dropout off while the attack searches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from toughen import threat
from toughen._registry import Registry
from toughen.text.attacks import TEXT_ATTACKS, embedding_pgd
from toughen.train.recipes import StepOutput


@dataclass
class TextRecipeContext:
    budget: int = 3  # edits per text for the discrete training attack
    attack: str = "char_obfuscate"  # the discrete training attack (text_augment)
    attack_options: dict[str, Any] = field(default_factory=lambda: {"max_candidates": 24})
    fraction: float = 1.0  # of each batch attacked online (text_augment)
    # text_augment's attack runs on the model in eval mode (dropout off) when True, then the mode
    # is put back: the greedy search ranks candidates by the loss, and dropout's noise misranks them
    attack_eval_mode: bool = True
    eps: float = 1.0  # radius on the input embeddings (embed_pgd, freelb)
    norm: str = "l2"
    steps: int = 3  # ascent steps on the embeddings
    step_size: float | None = None
    lam: float = 1.0  # weight of the adversarial loss: L_clean + lam * L_adv
    generator: torch.Generator | None = None


TextRecipe = Callable[[nn.Module, list, torch.Tensor, TextRecipeContext], StepOutput]
TEXT_RECIPES: Registry[TextRecipe] = Registry("text recipe")


def list_text_recipes() -> list[str]:
    return TEXT_RECIPES.names()


@TEXT_RECIPES.register("standard")
def standard(model, texts, y, ctx: TextRecipeContext) -> StepOutput:
    """Empirical risk minimization on the clean texts: the undefended baseline."""
    logits = model(*model.encode(texts))
    return StepOutput(F.cross_entropy(logits, y), clean_logits=logits)


@TEXT_RECIPES.register("text_augment")
def text_augment(model, texts, y, ctx: TextRecipeContext) -> StepOutput:
    """A2T (Yoo and Qi 2021, "Towards improving adversarial training of NLP models"): attack a
    random ``fraction`` of the batch online with a cheap attack (``char_obfuscate`` with a
    sampled candidate set by default), then minimize L(f(x), y) + lam * L(f(x_adv), y) over the
    clean batch and the attacked part."""
    n_adv = round(ctx.fraction * len(texts))
    logits = model(*model.encode(texts))
    loss = F.cross_entropy(logits, y)
    if n_adv == 0 or ctx.budget == 0:
        return StepOutput(loss, clean_logits=logits)
    pick = sorted(torch.randperm(len(texts), generator=ctx.generator)[:n_adv].tolist())
    attack = TEXT_ATTACKS.get(ctx.attack)
    training = model.training
    if ctx.attack_eval_mode:
        model.eval()
    try:
        res = attack(model, [texts[i] for i in pick], y[pick], budget=ctx.budget, generator=ctx.generator,
                     **ctx.attack_options)
    finally:
        model.train(training)
    adv_logits = model(*model.encode(res.adv_texts))
    loss = loss + ctx.lam * F.cross_entropy(adv_logits, y[pick])
    return StepOutput(loss, clean_logits=logits, adv_logits=adv_logits)


@TEXT_RECIPES.register("embed_pgd")
def embed_pgd(model, texts, y, ctx: TextRecipeContext) -> StepOutput:
    """Madry-style training in embedding space (Miyato et al. 2017 used one step; this is PGD):
    the worst delta in the eps-ball on the input embeddings, then L(f(e), y) + lam * L(f(e + delta), y).
    The embeddings get gradients from both terms."""
    ids, mask = model.encode(texts)
    delta = embedding_pgd(model, ids, mask, y, eps=ctx.eps, norm=ctx.norm, steps=ctx.steps, step_size=ctx.step_size,
                          generator=ctx.generator)
    emb = model.embed(ids)
    logits = model.classify(emb, mask)
    adv_logits = model.classify(emb + delta, mask)
    loss = F.cross_entropy(logits, y) + ctx.lam * F.cross_entropy(adv_logits, y)
    return StepOutput(loss, clean_logits=logits, adv_logits=adv_logits)


@TEXT_RECIPES.register("freelb")
def freelb(model, texts, y, ctx: TextRecipeContext) -> StepOutput:
    """FreeLB (Zhu et al. 2020, "FreeLB: enhanced adversarial training for natural language
    understanding"), Algorithm 1: K ascent steps on delta from a random start in the ball; the
    parameter gradient is the average of the K gradients taken along the way ("free" large
    batch), here as the mean of the K losses, each with its delta held fixed. As in the paper
    there is no separate clean term (``lam`` is unused): the first delta is a small random one."""
    ids, mask = model.encode(texts)
    m = mask[..., None].to(torch.float32)
    emb = model.embed(ids)
    k_steps = max(ctx.steps, 1)
    step_size = ctx.step_size if ctx.step_size is not None else threat.default_step_size(ctx.eps, k_steps)
    delta = threat.project(
        threat.random_start(emb.detach(), ctx.eps, ctx.norm, (-1e30, 1e30), ctx.generator), ctx.eps, ctx.norm
    ) * m
    adv_loss = 0.0
    for _ in range(k_steps):
        delta.requires_grad_(True)
        adv_logits = model.classify(emb + delta, mask)
        loss_k = F.cross_entropy(adv_logits, y)
        adv_loss = adv_loss + loss_k / k_steps
        # the graph is kept: the loop's backward() sums the K parameter gradients
        (g,) = torch.autograd.grad(loss_k, delta, retain_graph=True)
        delta = threat.project(delta.detach() + step_size * threat.ascent_direction(g * m, ctx.norm), ctx.eps,
                               ctx.norm) * m
    return StepOutput(adv_loss, adv_logits=adv_logits)
