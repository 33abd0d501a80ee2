"""Adversarial weight perturbation (AWP): ``--awp GAMMA`` on the pgd, trades and mart recipes.

Wu, Xia and Wang 2020, "Adversarial Weight Perturbation Helps Robust Generalization" (NeurIPS):
the gap between training and test robustness goes with how sharply the adversarial loss rises
around the weights, so AWP trains at the worst weights near the current ones as well as on the
worst inputs,

    min_w  max_{||v_l|| <= gamma ||w_l|| for each layer l}  L_adv(w + v),

the inner maximum approximated by one normalized gradient step per layer. One batch:

    x'    = the recipe's attack at w                  (the expensive part, run once)
    L(w)  = the recipe's loss at x', weights w        (the recipe's own forward pass)
    g_l   = dL / dw_l                                 (+1 backward pass)
    v_l   = gamma * ||w_l|| * g_l / ||g_l||           for each weight tensor w_l
    w    <- w + v;  L(w + v) on the same x'           (+1 forward pass)
    backward (the training one), w <- the saved copy of w, the optimizer's step

so the update is taken from w with the gradient at w + v.

Design:

* The loss perturbed against is the recipe's own, on its attack points: CE(f(x')) for pgd,
  CE(f(x)) + beta KL(f(x) || f(x')) for trades (as the paper's TRADES-AWP), MART's loss for mart.
  A recipe that supports AWP returns, besides its loss, ``StepOutput.recompute``: the same loss on
  the same x' computed with whatever weights the model holds when it is called. The attack is not
  run again, and the gradient for v comes from the recipe's own forward pass at w, so AWP adds one
  forward and one backward pass of that loss per batch (the reference implementation computes the
  same direction on a proxy copy of the model). The cost accounting (toughen.train.cost) counts
  them: pgd-K costs K + 2 standard epochs instead of K + 1, trades-K and mart-K K + 4 instead of K + 2.
* Which tensors: the parameters of more than one dimension (convolution kernels, weight
  matrices), as in the paper's code; biases and normalization scales and shifts are not perturbed.
* Restoring is exact: the weights are copied before the move and copied back after the backward
  pass (not ``w - v``, which rounds), so the optimizer (momentum, Adam's moments, weight decay,
  gradient clipping) works on the weights themselves. (The reference code subtracts v after the
  step, so its weight decay acts on w + v: a difference of order gamma * weight_decay.)
* BatchNorm's running statistics are copied back too: the pass at w + v does not move them, so they
  are those of the recipe's passes at w, as without AWP (the reference computes v on a proxy model
  for the same reason).
* The metrics row's loss and training accuracies are the recipe's at w, comparable with a run
  without ``--awp``; the loss minimized is the one at w + v.
* Under torchrun each rank's gradient for v is summed over the ranks first, so every rank moves
  its weights alike, along the global batch's gradient.
* A layer whose gradient is zero or not finite (an fp16 overflow) is not moved in that batch.
* AWP keeps nothing from one batch to the next: a checkpoint needs only the config's gamma.

In your own loop::

    awp = AWP(model, gamma=0.005)
    out = RECIPES.get("pgd")(model, x, y, ctx)
    with awp.perturbed(out.loss):      # the weights are w + v inside the block
        optimizer.zero_grad()
        out.recompute().backward()
    optimizer.step()                   # w again, bit for bit, with the gradient from w + v
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from toughen.runtime import SINGLE, Dist


class AWP:
    """Perturbs ``model``'s weight tensors by ``gamma`` times their norm against a loss, and
    restores them exactly."""

    def __init__(self, model: nn.Module, gamma: float, dist: Dist = SINGLE) -> None:
        self.gamma, self.dist = gamma, dist
        self.weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
        self.buffers = list(model.buffers())
        self._saved: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @property
    def active(self) -> bool:
        """Whether the weights are perturbed now (between :meth:`perturb` and :meth:`restore`)."""
        return self._saved is not None

    def perturbation(self, loss: torch.Tensor) -> list[torch.Tensor]:
        """v_l = gamma * ||w_l|| * g_l / ||g_l|| for each weight tensor, g the gradient of ``loss``
        (whose graph it consumes); zero for a tensor whose gradient is zero, not finite or absent."""
        grads = torch.autograd.grad(loss, self.weights, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(w) for w, g in zip(self.weights, grads)]
        if self.dist.enabled:  # one perturbation for every rank: the global batch's direction
            import torch.distributed as td

            for g in grads:
                td.all_reduce(g, op=td.ReduceOp.SUM)
        with torch.no_grad():
            moves = []
            for w, g in zip(self.weights, grads):
                g_norm = g.norm()
                ok = torch.isfinite(g_norm) & (g_norm > 0)
                moves.append(torch.where(ok, g * (self.gamma * w.norm() / g_norm), 0.0).to(w.dtype))
            return moves

    def perturb(self, loss: torch.Tensor) -> None:
        """Move the weights to w + v (:meth:`perturbation` of ``loss``), keeping a copy of w and of
        the buffers (BatchNorm's statistics) for :meth:`restore`."""
        if self.active:
            raise RuntimeError("the weights are perturbed already: restore() first")
        moves = self.perturbation(loss)
        self._saved = ([w.detach().clone() for w in self.weights], [b.detach().clone() for b in self.buffers])
        with torch.no_grad():
            for w, v in zip(self.weights, moves):
                w.add_(v)
        # Inside an autocast region the bf16/fp16 copies of the weights are cached for the region's
        # whole life: without this the pass "at w + v" would reuse the copies of w, and AWP would
        # change nothing (it did, under --amp bf16, until this line).
        torch.clear_autocast_cache()

    def restore(self) -> None:
        """Copy back the weights and buffers saved by :meth:`perturb`, bit for bit; nothing to do
        when they are not perturbed (the loop calls this before every optimizer step)."""
        if self._saved is None:
            return
        weights, buffers = self._saved
        with torch.no_grad():
            for w, saved in zip(self.weights, weights):
                w.copy_(saved)
            for b, saved in zip(self.buffers, buffers):
                b.copy_(saved)
        self._saved = None
        torch.clear_autocast_cache()  # casts of w + v must not outlive them (see perturb)

    @contextmanager
    def perturbed(self, loss: torch.Tensor) -> Iterator[None]:
        """The weights are w + v inside the block (v from ``loss``), w again after it."""
        self.perturb(loss)
        try:
            yield
        finally:
            self.restore()
