"""Certified training: recipes that minimize a sound bound on the worst-case loss over the ball,
so the trained model can be certified (toughen.certify), not only attacked.

Both recipes minimize kappa * CE(f(x), y) + (1 - kappa) * CE(z_worst, y), where z_worst are the
worst-case logits the bound allows: 0 for the true class and -m_j for class j, m_j a lower bound
on the margin z_y - z_j over the ball. kappa ramps from 1 to ``certified_kappa`` with the run's eps
warm-up (``--eps-warmup``; ctx.ramp), as eps itself ramps from 0: a bound taken at the full eps
from the first step leaves the network unable to learn (Gowal et al. 2018 ramp both).

Train at a somewhat larger eps than you certify (Gowal et al.: 0.4 for 0.3 on MNIST); the bound
is looser than the truth, so the margin it leaves at the training eps is what certifies at the
test eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toughen.certify.bounds import crown_spec_bounds, ibp_spec_bounds, margin_spec, sequential_layers
from toughen.train._registry import RecipeContext, StepOutput, param, register_recipe


@dataclass(frozen=True)
class CertifiedParams:
    certified_kappa: float = param(0.5, "Final weight of the natural loss; it ramps from 1 with the eps warm-up.",
                                   low=0, high=1)


def _worst_case_loss(margins: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE of the worst logits the bound allows: the true class at 0 (index 0), class j at -m_j."""
    worst = torch.cat([torch.zeros_like(margins[:, :1]), -margins], dim=1)
    return F.cross_entropy(worst, torch.zeros_like(y))


def _certified_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext,
                    margins: torch.Tensor, logits: torch.Tensor) -> StepOutput:
    kappa = 1 - (1 - ctx.params_for(CertifiedParams).certified_kappa) * ctx.ramp
    loss = kappa * F.cross_entropy(logits, y) + (1 - kappa) * _worst_case_loss(margins, y)
    return StepOutput(loss, clean_logits=logits)


@register_recipe("ibp", params=CertifiedParams)
def ibp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """IBP training (Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for
    Training Verifiably Robust Models"): the worst case comes from interval bounds, two forward
    passes' worth of work. Robust accuracy in the running metrics is left to validation's PGD."""
    layers = sequential_layers(model)
    logits = model(x)
    spec = margin_spec(y, logits.shape[1]).to(logits.dtype)
    margins = ibp_spec_bounds(layers, x, spec, ctx.eps, ctx.norm, ctx.bounds).lower
    return _certified_step(model, x, y, ctx, margins, logits)


@register_recipe("crown_ibp", params=CertifiedParams)
def crown_ibp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext) -> StepOutput:
    """CROWN-IBP (Zhang et al. 2020, "Towards Stable and Efficient Training of Verifiably Robust
    Neural Networks"): IBP bounds the hidden layers, CROWN the output from them, and the margin is
    the mix beta * CROWN + (1 - beta) * IBP with beta falling from 1 to 0 over the warm-up (the
    paper's schedule): CROWN's tighter bound steers early training, IBP's the end. About one more
    backward pass than ibp per batch."""
    layers = sequential_layers(model)
    logits = model(x)
    spec = margin_spec(y, logits.shape[1]).to(logits.dtype)
    ibp_margins = ibp_spec_bounds(layers, x, spec, ctx.eps, ctx.norm, ctx.bounds).lower
    beta = 1 - ctx.ramp
    margins = ibp_margins
    if beta > 0 and ctx.eps > 0:
        crown = crown_spec_bounds(layers, x, spec, ctx.eps, ctx.norm, ctx.bounds, work=0).lower
        margins = beta * crown + (1 - beta) * ibp_margins
    return _certified_step(model, x, y, ctx, margins, logits)
