"""Cost accounting: count the forward and backward passes through a model, per example.

A hook on the model counts every forward call by its batch size, and a hook on the output
counts the backward pass that goes through it (for the parameters' gradients or only for the
input's, as an attack needs). A standard epoch costs one forward and one backward pass per
training example, so

    cost_multiplier = (forward + backward) / (2 * n_train)

PGD-K training costs about K + 1 times a standard epoch by this count. The multiplier is
derived from the pass counts, not from timing a standard epoch: it treats a backward pass as
costing the same as a forward pass (in practice it costs about twice as much, and an
input-only backward slightly less than a full one), so it is a count of work, and the wall
seconds are reported beside it.
"""

from __future__ import annotations

import torch
from torch import nn


class PassCounter:
    """Counts per-example forward and backward passes through ``model`` while attached.

    Example:
        >>> with PassCounter(model) as count:
        ...     loss = F.cross_entropy(model(x), y); loss.backward()
        >>> count.forward, count.backward  # (len(x), len(x))
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.forward = 0
        self.backward = 0
        self._handle = None

    def _on_forward(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        n = len(output)
        self.forward += n
        if output.requires_grad:
            def on_backward(grad: torch.Tensor) -> None:
                self.backward += n
            output.register_hook(on_backward)

    def attach(self) -> "PassCounter":
        if self._handle is None:
            self._handle = self.model.register_forward_hook(self._on_forward)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def take(self) -> tuple[int, int]:
        """The counts since the last take, and reset them."""
        counts = (self.forward, self.backward)
        self.forward = self.backward = 0
        return counts

    def __enter__(self) -> "PassCounter":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()
