"""The cheap recipes: one gradient computation per attack step, so an epoch costs about twice
a standard one (Free: m times, for m replays that each also train).

They are fast and known to fail: with a large eps, single-step training can collapse within an
epoch to 0% robust accuracy against PGD while its own attack still looks beaten
("catastrophic overfitting", Wong et al. 2020). The loop's guard (toughen.train.guard) watches
these recipes with a PGD probe; SINGLE_STEP names them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toughen import threat
from toughen.attacks import pgd
from toughen.train.recipes import RECIPES, RecipeContext, StepOutput, require_update

SINGLE_STEP = ("fgsm", "fgsm_rs", "nfgsm", "gradalign", "free")


def _one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext, *,
              step_size: float, random_start: bool) -> torch.Tensor:
    """One PGD step (toughen.attacks.pgd with steps=1, last iterate): FGSM and its variants."""
    if ctx.eps == 0:
        return x
    return pgd(model, x, y, eps=ctx.eps, norm=ctx.norm, steps=1, step_size=step_size,
               random_start=random_start, bounds=ctx.bounds, keep_best=False, generator=ctx.generator)


def _train_on(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> StepOutput:
    logits_adv = model(x_adv)
    return StepOutput(F.cross_entropy(logits_adv, y), adv_logits=logits_adv)


@RECIPES.register("fgsm")
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """FGSM training (Goodfellow et al. 2015): train on x + eps * sign(grad_x L(x, y)), one step
    from a zero start. Prone to catastrophic overfitting at large eps."""
    return _train_on(model, _one_step(model, x, y, ctx, step_size=ctx.eps, random_start=False), y)


@RECIPES.register("fgsm_rs")
def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """FGSM with a random start (Wong et al. 2020, "Fast is better than free"): delta ~ U(ball),
    one step of 1.25 eps, projected back to the eps-ball."""
    return _train_on(model, _one_step(model, x, y, ctx, step_size=1.25 * ctx.eps, random_start=True), y)


@RECIPES.register("nfgsm")
def nfgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """N-FGSM (de Jorge et al. 2022, "Make Some Noise"): noise eta ~ U(-2 eps, 2 eps), then one
    step of eps from x + eta, and no projection back to the eps-ball (the perturbation may
    reach 3 eps); only the data bounds are enforced."""
    if ctx.eps == 0:
        return _train_on(model, x, y)
    x_noisy = x + threat.random_start(x, 2 * ctx.eps, ctx.norm, ctx.bounds, ctx.generator)
    # An FGSM step of size eps centred at the noisy point: its eps-ball projection is a no-op.
    x_adv = pgd(model, x_noisy, y, eps=ctx.eps, norm=ctx.norm, steps=1, step_size=ctx.eps,
                random_start=False, bounds=ctx.bounds, keep_best=False)
    return _train_on(model, x_adv, y)


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """grad_x CE(f(x), y) (the batch mean's), optionally differentiable for a regularizer."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


@RECIPES.register("gradalign")
def gradalign(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """FGSM + GradAlign (Andriushchenko and Flammarion 2020, "Understanding and Improving Fast
    Adversarial Training"): CE on the FGSM example plus
    lambda * (1 - cos(grad_x L(x), grad_x L(x + eta))), eta ~ U(-eps, eps), which keeps the loss
    locally linear so that the single step stays a good attack. Only the second gradient is
    differentiated through (double backpropagation), as in the paper's code."""
    if ctx.eps == 0:
        return _train_on(model, x, y)
    grad_clean = input_grad(model, x, y, create_graph=False)
    # FGSM from zero: the step along the clean gradient, which we have already.
    x_adv = x + threat.step(x, torch.zeros_like(x), grad_clean, ctx.eps, ctx.eps, ctx.norm, ctx.bounds)
    eta = threat.random_start(x, ctx.eps, ctx.norm, ctx.bounds, ctx.generator)
    grad_noisy = input_grad(model, x + eta, y, create_graph=True)
    cos = F.cosine_similarity(grad_clean.flatten(1), grad_noisy.flatten(1), dim=1, eps=1e-12)
    out = _train_on(model, x_adv, y)
    out.loss = out.loss + ctx.gradalign_lambda * (1 - cos).mean()
    return out


@RECIPES.register("free")
def free(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """Free adversarial training (Shafahi et al. 2019, "Adversarial Training for Free!"): each
    minibatch is replayed m = free_replays times; every replay's one backward pass gives both the
    parameters' gradient (an optimizer step) and the input's (a step of eps on the perturbation),
    and the perturbation is carried over to the next minibatch. An epoch costs m standard ones:
    run epochs / m epochs for the cost of standard training."""
    update = require_update(ctx, "free")
    carried = ctx.state.get("free_delta")
    if carried is None or carried.shape[1:] != x.shape[1:] or len(carried) < len(x):
        carried = torch.zeros_like(x)  # the first batch (or the data changed shape)
    delta = threat.clamp_to_bounds(x, threat.project(carried[: len(x)], ctx.eps, ctx.norm), ctx.bounds)
    for _ in range(ctx.free_replays):
        delta.requires_grad_(True)
        logits = model(x + delta)
        loss = F.cross_entropy(logits, y)
        update(loss)  # backward fills delta.grad beside the parameters' gradients
        delta = threat.step(x, delta.detach(), delta.grad, ctx.eps, ctx.eps, ctx.norm, ctx.bounds)
    carried = carried.clone()
    carried[: len(x)] = delta
    ctx.state["free_delta"] = carried
    return StepOutput(loss.detach(), adv_logits=logits.detach(), updated=True)
