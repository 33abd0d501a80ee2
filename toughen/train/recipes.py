"""Training recipes: each is one function that turns a batch into the loss to minimize.

A recipe has the signature ``recipe(model, x, y, ctx) -> StepOutput`` and can be dropped into
any training loop::

    ctx = RecipeContext(eps=0.3, norm="linf", steps=10, step_size=0.075)
    out = RECIPES.get("pgd")(model, x, y, ctx)
    out.loss.backward(); optimizer.step()

The loop in :mod:`toughen.train.loop` sets the model's mode; recipes change it only inside
``ctx.crafting``, which puts BatchNorm in eval mode while an attack is crafted when the run asks
for ``attack_bn="eval"``.

A recipe returns the loss and the loop takes the optimizer step, except for a recipe that
needs what happens around it (``free`` takes several steps per batch, ``atta_free`` reads the
input's gradient from the training backward): it calls ``ctx.update(loss)`` (backward, clip,
optimizer step; the loop supplies it) itself and returns ``StepOutput(..., updated=True)``.
pgd, trades and mart also return ``StepOutput.recompute``, their loss on the same attack points
at whatever weights the model then holds, which ``--awp`` (:mod:`toughen.train.awp`) trains on.
The single-step recipes (fgsm, fgsm_rs, nfgsm, gradalign, free, atta, atta_free) live in
:mod:`toughen.train.single_step`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toughen import threat
from toughen.data.augment import random_crop, random_flip
from toughen.train._registry import (  # noqa: F401  (the recipe contract, imported from here too)
    RECIPES, Recipe, RecipeContext, StepOutput, list_recipes, param, recipe_parameters, register_recipe,
    require_index, require_update, traits,
)


@register_recipe("standard")
def standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """Empirical risk minimization on clean inputs: the undefended baseline."""
    logits = model(x)
    return StepOutput(ctx.ce(logits, y), clean_logits=logits)


@register_recipe("pgd", awp=True)
def madry(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """Madry et al. (2018): min_theta E[max_{||delta|| <= eps} L(f(x + delta), y)], the inner
    max approximated by PGD; the model is trained on adversarial inputs only."""
    x_adv = ctx.attack(model, x, y)
    logits_adv = model(x_adv)
    return StepOutput(ctx.ce(logits_adv, y), adv_logits=logits_adv, recompute=lambda: ctx.ce(model(x_adv), y))


@dataclass(frozen=True)
class MixParams:
    lam: float = param(1.0, "Weight of the adversarial loss.", low=0)


@register_recipe("mix", params=MixParams)
def mix(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """The mixed objective L(f(x), y) + lam * L(f(x_adv), y) (Goodfellow et al. 2015 used
    alpha * L_clean + (1 - alpha) * L_adv; lam = (1 - alpha) / alpha)."""
    x_adv = ctx.attack(model, x, y)
    logits = model(torch.cat([x, x_adv]))
    clean, adv = logits[: len(x)], logits[len(x) :]
    loss = ctx.ce(clean, y) + ctx.params_for(MixParams).lam * ctx.ce(adv, y)
    return StepOutput(loss, clean_logits=clean, adv_logits=adv)


@dataclass(frozen=True)
class BetaParams:
    beta: float = param(6.0, "Weight of the robustness term.", low=0)


@register_recipe("trades", params=BetaParams, awp=True)
def trades(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy"): min CE(f(x), y) + beta * KL(f(x) || f(x')), where x' maximizes the same KL
    inside the eps-ball, found by PGD from x + 0.001 * N(0, I)."""
    beta = ctx.params_for(BetaParams).beta
    logits = model(x)
    p_clean = F.softmax(logits.detach(), dim=1)
    x_adv = kl_ascent(model, x, p_clean, ctx)
    logits_adv = model(x_adv)
    smoothing = ctx.label_smoothing
    return StepOutput(trades_loss(logits, logits_adv, y, beta, smoothing), clean_logits=logits,
                      adv_logits=logits_adv, recompute=lambda: trades_loss(model(x), model(x_adv), y, beta, smoothing))


def trades_loss(logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """CE(f(x), y) + beta * KL(f(x) || f(x')), from the clean and the adversarial logits."""
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing) + beta * robust


def kl_ascent(model: nn.Module, x: torch.Tensor, p_clean: torch.Tensor, ctx: RecipeContext) -> torch.Tensor:
    """TRADES' inner maximization: projected ascent on KL(p_clean || f(x + delta)).

    pgd() maximizes a loss of the labels (ce, margin); this objective is a distance to the
    clean prediction, so the few lines of ascent are here, with the threat model's own step
    and projection (threat.step)."""
    if ctx.eps == 0 or ctx.steps == 0:
        return x
    step_size = ctx.step_size if ctx.step_size is not None else threat.default_step_size(ctx.eps, ctx.steps)
    noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
    delta = threat.clamp_to_bounds(x, 0.001 * noise, ctx.bounds)
    with ctx.crafting(model):
        for _ in range(ctx.steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(model(x + delta), dim=1).float(), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, delta)
            delta = threat.step(x, delta.detach(), grad, step_size, ctx.eps, ctx.norm, ctx.bounds)
    return (x + delta).detach()


@register_recipe("mart", params=BetaParams, awp=True)
def mart(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """MART (Wang et al. 2020, "Improving Adversarial Robustness Requires Revisiting
    Misclassified Examples"): a boosted CE on the PGD example,
    BCE = CE(f(x'), y) - log(1 - max_{k != y} p_k(x')), plus
    beta * KL(f(x) || f(x')) * (1 - p_y(x)), which weighs the misclassified clean examples most."""
    beta = ctx.params_for(BetaParams).beta
    x_adv = ctx.attack(model, x, y)
    both = torch.cat([x, x_adv])
    logits = model(both)
    clean, adv = logits[: len(x)], logits[len(x) :]
    return StepOutput(mart_loss(clean, adv, y, beta), clean_logits=clean, adv_logits=adv,
                      recompute=lambda: mart_loss(*model(both).split(len(x)), y, beta))


def mart_loss(clean: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART's loss from the clean and the adversarial logits."""
    p_adv, p_clean = F.softmax(adv, dim=1), F.softmax(clean, dim=1)
    # the most likely wrong class of each adversarial example
    wrong = p_adv.scatter(1, y[:, None], float("-inf")).argmax(dim=1)
    bce = F.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), wrong)
    kl = (p_clean * (torch.log(p_clean + 1e-12) - torch.log(p_adv + 1e-12))).sum(dim=1)
    p_true = p_clean.gather(1, y[:, None]).squeeze(1)
    return bce + beta * (kl * (1.0000001 - p_true)).mean()


@dataclass(frozen=True)
class AugmentParams:
    noise_std: float | None = param(None, "Gaussian noise std, in data units; default eps.", low=0)
    augment_crop: bool = param(True, "Random crops (shifts of up to 1/8 of the side).")
    augment_flip: bool = param(False, "Horizontal flips (off: a mirrored digit is another digit).")


@register_recipe("augment", params=AugmentParams)
def augment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """The data-augmentation baseline the robust recipes are compared with: a random crop
    (pad by 1/8 of the side, shift), an optional horizontal flip, and Gaussian noise of
    standard deviation ``noise_std`` (default eps), clamped to the bounds. No attack."""
    p = ctx.params_for(AugmentParams)
    x_aug = x
    if p.augment_crop:
        x_aug = random_crop(x, max(1, x.shape[-1] // 8), ctx.generator, fill=ctx.bounds[0])
    if p.augment_flip:
        x_aug = random_flip(x_aug, ctx.generator)
    std = p.noise_std if p.noise_std is not None else ctx.eps
    noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
    x_aug = (x_aug + std * noise).clamp(*ctx.bounds)
    logits = model(x_aug)
    return StepOutput(ctx.ce(logits, y), clean_logits=logits)
