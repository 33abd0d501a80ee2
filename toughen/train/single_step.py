"""The cheap recipes: one gradient computation per attack step, so an epoch costs about twice
a standard one (Free: m times, for m replays that each also train). Free and ATTA carry their
perturbations over (Free from one minibatch to the next, ATTA per example from one epoch to the
next), so their single steps add up to a multi-step attack.

They are fast and known to fail: with a large eps, single-step training can collapse within an
epoch to 0% robust accuracy against PGD while its own attack still looks beaten
("catastrophic overfitting", Wong et al. 2020). The loop's guard (toughen.train.guard) watches
these recipes with a PGD probe (they are registered with ``single_step=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toughen import threat
from toughen.attacks import pgd
from toughen.train._registry import (
    RecipeContext, StepOutput, param, register_recipe, require_index, require_update,
)


def _one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext, *,
              step_size: float, random_start: bool) -> torch.Tensor:
    """One PGD step (toughen.attacks.pgd with steps=1, last iterate): FGSM and its variants."""
    if ctx.eps == 0:
        return x
    with ctx.crafting(model):
        return pgd(model, x, y, eps=ctx.eps, norm=ctx.norm, steps=1, step_size=step_size,
                   random_start=random_start, bounds=ctx.bounds, keep_best=False, generator=ctx.generator)


def _train_on(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    logits_adv = model(x_adv)
    return StepOutput(ctx.ce(logits_adv, y), adv_logits=logits_adv)


@register_recipe("fgsm", single_step=True)
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """FGSM training (Goodfellow et al. 2015): train on x + eps * sign(grad_x L(x, y)), one step
    from a zero start. Prone to catastrophic overfitting at large eps."""
    return _train_on(model, _one_step(model, x, y, ctx, step_size=ctx.eps, random_start=False), y, ctx)


@register_recipe("fgsm_rs", single_step=True)
def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """FGSM with a random start (Wong et al. 2020, "Fast is better than free"): delta ~ U(ball),
    one step of 1.25 eps, projected back to the eps-ball."""
    return _train_on(model, _one_step(model, x, y, ctx, step_size=1.25 * ctx.eps, random_start=True), y, ctx)


@register_recipe("nfgsm", single_step=True)
def nfgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """N-FGSM (de Jorge et al. 2022, "Make Some Noise"): noise eta ~ U(-2 eps, 2 eps), then one
    step of eps from x + eta, and no projection back to the eps-ball (the perturbation may
    reach 3 eps); only the data bounds are enforced."""
    if ctx.eps == 0:
        return _train_on(model, x, y, ctx)
    x_noisy = x + threat.random_start(x, 2 * ctx.eps, ctx.norm, ctx.bounds, ctx.generator)
    # An FGSM step of size eps centred at the noisy point: its eps-ball projection is a no-op.
    return _train_on(model, _one_step(model, x_noisy, y, ctx, step_size=ctx.eps, random_start=False), y, ctx)


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """grad_x CE(f(x), y) (the batch mean's), optionally differentiable for a regularizer."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


@dataclass(frozen=True)
class GradAlignParams:
    gradalign_lambda: float = param(0.2, "Weight of the gradient-alignment regularizer.", low=0)


@register_recipe("gradalign", params=GradAlignParams, single_step=True)
def gradalign(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """FGSM + GradAlign (Andriushchenko and Flammarion 2020, "Understanding and Improving Fast
    Adversarial Training"): CE on the FGSM example plus
    lambda * (1 - cos(grad_x L(x), grad_x L(x + eta))), eta ~ U(-eps, eps), which keeps the loss
    locally linear so that the single step stays a good attack. Only the second gradient is
    differentiated through (double backpropagation), as in the paper's code."""
    if ctx.eps == 0:
        return _train_on(model, x, y, ctx)
    with ctx.crafting(model):  # the FGSM direction; the regularizer takes it as a constant
        grad_clean = input_grad(model, x, y, create_graph=False)
    # FGSM from zero: the step along the clean gradient, which we have already.
    x_adv = x + threat.step(x, torch.zeros_like(x), grad_clean, ctx.eps, ctx.eps, ctx.norm, ctx.bounds)
    eta = threat.random_start(x, ctx.eps, ctx.norm, ctx.bounds, ctx.generator)
    grad_noisy = input_grad(model, x + eta, y, create_graph=True)
    cos = F.cosine_similarity(grad_clean.flatten(1), grad_noisy.flatten(1), dim=1, eps=1e-12)
    out = _train_on(model, x_adv, y, ctx)
    out.loss = out.loss + ctx.params_for(GradAlignParams).gradalign_lambda * (1 - cos).mean()
    return out


@dataclass(frozen=True)
class FreeParams:
    free_replays: int = param(4, "Replays m of each minibatch.", low=1, high=1000)


@register_recipe("free", params=FreeParams, single_step=True)
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
    for _ in range(ctx.params_for(FreeParams).free_replays):
        delta.requires_grad_(True)
        logits = model(x + delta)
        loss = ctx.ce(logits, y)
        update(loss)  # backward fills delta.grad beside the parameters' gradients
        delta = threat.step(x, delta.detach(), delta.grad, ctx.eps, ctx.eps, ctx.norm, ctx.bounds)
    carried = carried.clone()
    carried[: len(x)] = delta
    ctx.state["free_delta"] = carried
    return StepOutput(loss.detach(), adv_logits=logits.detach(), updated=True)


# ATTA's step, as a fraction of eps. The stored perturbations accumulate these steps over the
# epochs; chosen on mnist5k at eps 0.3 (small_cnn, 6 epochs, PGD-50 on the test digits): 0.25 ->
# 17%, 0.5 -> 30%, 0.75 -> 28%, 1.25 (FGSM-RS's step, which lands on a corner of the ball each
# time) -> 15%. atta_free takes two such steps per visit; at 10 epochs, 0.5 for both (43.6% under
# PGD-50, validation 43.3%) beat 0.25 for both (41.3%, 41.3%) and 0.5 then 0.25 (42.1%, 39.8%).
ATTA_STEP = 0.5


def _stored_start(x: torch.Tensor, ctx: RecipeContext) -> torch.Tensor:
    """The batch's stored perturbations (a uniform random point in the ball for an example not
    seen before, as FGSM-RS starts), inside the current ball and the bounds. Creates the store
    in ``ctx.state`` (one perturbation and a seen flag per training example) on first use. The
    caller has checked ``ctx.index`` and ``ctx.train_size`` (require_index)."""
    index, size = ctx.index, ctx.train_size
    store, seen = ctx.state.get("atta_delta"), ctx.state.get("atta_seen")
    if store is None or store.shape != (size, *x.shape[1:]):
        store = torch.zeros((size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        seen = torch.zeros(size, dtype=torch.bool, device=x.device)
    start = store[index]
    fresh = ~seen[index]
    if fresh.any():
        noise = threat.random_start(x, ctx.eps, ctx.norm, ctx.bounds, ctx.generator)
        start = torch.where(threat.per_example(fresh, x), noise, start)
    # With the loop's warm-up eps only grows and this is a no-op; a loop that lowers eps gets its
    # stored points back inside the smaller ball.
    start = threat.clamp_to_bounds(x, threat.project(start, ctx.eps, ctx.norm), ctx.bounds)
    ctx.state["atta_delta"], ctx.state["atta_seen"] = store, seen
    return start


def _remember(ctx: RecipeContext, delta: torch.Tensor) -> None:
    ctx.state["atta_delta"][ctx.index] = delta.detach()
    ctx.state["atta_seen"][ctx.index] = True


def _atta_step(x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, ctx: RecipeContext) -> torch.Tensor:
    return threat.step(x, delta, grad, ATTA_STEP * ctx.eps, ctx.eps, ctx.norm, ctx.bounds)


def _advance_stored(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> torch.Tensor:
    """The batch's stored perturbations (or random starts) advanced by one ATTA step, crafted apart
    from training (``ctx.crafting``)."""
    start = _stored_start(x, ctx)
    with ctx.crafting(model):
        return _atta_step(x, start, input_grad(model, x + start, y, create_graph=False), ctx)


@register_recipe("atta", single_step=True, per_example=True)
def atta(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """ATTA-1 (Zheng et al. 2020, "Efficient Adversarial Training with Transferable Adversarial
    Examples"): every training example keeps its perturbation from one epoch to the next, and each
    epoch takes one more gradient-sign step of ATTA_STEP * eps from it (projected to the current
    eps-ball and the bounds), so over E epochs the steps accumulate into an E-step attack at the
    cost of FGSM: adversarial examples transfer well enough between the models of consecutive
    epochs. An example's first step starts from a uniform random point in the ball, as FGSM-RS.

    Needs ``ctx.index`` (the batch's dataset indices) and ``ctx.train_size``; the loop gives them.
    The stored perturbations (one per training example, the size of the training set) are in
    ``ctx.state`` and so in the checkpoint. They are kept in the frame of the stored image, so the
    recipe refuses random crops and flips (TrainConfig.validate), which would misalign them."""
    require_index(ctx, "atta")
    if ctx.eps == 0:
        return _train_on(model, x, y, ctx)
    delta = _advance_stored(model, x, y, ctx)
    _remember(ctx, delta)
    return _train_on(model, (x + delta).detach(), y, ctx)


@register_recipe("atta_free", single_step=True, per_example=True)
def atta_free(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """ATTA (Zheng et al. 2020; see ``atta``) with Free's trick (Shafahi et al. 2019, "Adversarial
    Training for Free!"): the training step's backward pass at x + delta yields the input's
    gradient beside the parameters', and that is exactly the gradient the next attack step needs.
    So each visit advances the stored perturbation by two ATTA_STEP * eps sign steps (one before
    training on it, one from the training backward) for the price of ATTA-1, one extra gradient
    computation per batch. A combination of the two papers, not a recipe from either; on mnist5k
    it scored -0.3 to +2.6 points of PGD-50 accuracy against atta at four seeds (+1.6 on average)
    for about 8% more time (96 s vs 89 s at seed 0, in one run; docs/benchmarks.md).

    The second step's gradient is of the model before this batch's optimizer step, as the first's
    is; it carries over to the next epoch, as ATTA's does. Takes its optimizer step itself
    (``ctx.update``), and needs what ``atta`` needs."""
    update = require_update(ctx, "atta_free")
    require_index(ctx, "atta_free")
    if ctx.eps == 0:
        return _train_on(model, x, y, ctx)
    delta = _advance_stored(model, x, y, ctx)
    x_adv = (x + delta).detach().requires_grad_(True)
    logits = model(x_adv)
    loss = ctx.ce(logits, y)
    update(loss)  # backward fills x_adv.grad beside the parameters' gradients
    # An fp16 loss scale that overflowed (the scaler then skips the optimizer step) leaves inf or
    # NaN here: those examples keep delta (no second step) rather than a poisoned memory.
    grad = x_adv.grad
    finite = threat.per_example(torch.isfinite(grad).flatten(1).all(dim=1), x)
    stepped = _atta_step(x, delta, torch.where(finite, grad, torch.zeros_like(grad)), ctx)
    _remember(ctx, torch.where(finite, stepped, delta))
    return StepOutput(loss.detach(), adv_logits=logits.detach(), updated=True)
