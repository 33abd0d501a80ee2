"""What toughen needs from a model: ``forward(x)`` returns a (N, classes) tensor of logits.

Every forward pass whose output toughen reads goes through :func:`logits_of`, so a model with
another output (a tuple, a dict, a Hugging Face ``ModelOutput``) fails on its first pass with a
message that says what to do, instead of deep inside a loss.
"""

from __future__ import annotations

import torch

from toughen.errors import ToughenUsageError


def check_logits(output, batch: int) -> torch.Tensor:
    """``output`` if it is what toughen needs from a model, a (batch, classes) tensor of logits;
    else a clear error. A model that returns a tuple, a dict or a Hugging Face ModelOutput is
    refused rather than guessed at: which element holds the logits is the model's business."""
    if not isinstance(output, torch.Tensor):
        raise ToughenUsageError(
            f"the model returned a {type(output).__name__}, not a tensor of logits; toughen needs forward(x) -> "
            "logits of shape (N, classes): wrap it in a module whose forward returns them (e.g. output[0] or "
            "output['logits'])"
        )
    if output.dim() != 2 or len(output) != batch:
        raise ToughenUsageError(f"the model returned shape {tuple(output.shape)} for {batch} inputs; toughen needs "
                                f"logits of shape ({batch}, classes)")
    return output


def logits_of(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, checked to be a (len(x), classes) tensor of logits: every attack's forward
    pass goes through here, so a model with another output fails on its first pass with a
    message that says what to do, not deep inside a loss."""
    return check_logits(model(x), len(x))
