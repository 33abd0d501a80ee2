"""Making attacks fast without changing their answers: bf16 or fp16 autocast with the
full-precision check that keeps low-precision attacks honest, and the channels-last memory
format for image models.

Under autocast the forward and backward passes run about 2x faster (CPUs with bf16 instructions,
GPUs), and the gradient an attack follows is barely changed. But a logit computed in bf16 can
put an input on the wrong side of the decision boundary, so an attack that counted "fooled" from
low-precision logits would report robust accuracy too low. Every attack here therefore decides
who is fooled with :func:`confirm_fooled`: the candidates the low-precision pass calls fooled are
re-run in the model's own precision, and only those that are still fooled count.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from toughen.errors import ToughenUsageError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None) -> None:
    if amp is not None and amp not in AMP_DTYPES:
        raise ToughenUsageError(f"unknown amp {amp!r}; choose bf16 or fp16 (or None for fp32)")


def autocast_for(device: torch.device | torch.Tensor, amp: str | None) -> contextlib.AbstractContextManager:
    """Autocast to ``amp`` ("bf16" or "fp16") on the device (of a tensor); a no-op when amp is None."""
    check_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    device_type = device.device.type if isinstance(device, torch.Tensor) else torch.device(device).type
    return torch.autocast(device_type, dtype=AMP_DTYPES[amp])


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Switch autocast off (inside an autocast region too)."""
    return torch.autocast(x.device.type, enabled=False)


@contextlib.contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` in the channels-last (NHWC) memory format inside the block, and put it back
    afterwards. The arithmetic is the same; the convolution and pooling kernels of oneDNN and of
    tensor cores are faster on it (measured: Square 25% and APGD 15% faster on small_cnn in fp32 on
    a 2-core CPU). A model without 4-D weights, or one already channels-last, is left as it is."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    if not enabled or not weights or all(p.is_contiguous(memory_format=torch.channels_last) for p in weights):
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def confirm_fooled(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                   fooled: torch.Tensor) -> torch.Tensor:
    """``fooled`` (a per-example bool from low-precision logits) narrowed to the examples whose
    ``x_adv`` still fools the model in full precision: misclassified, or classified as ``target``.
    Only the candidates are re-run, so the check costs a forward pass of the few newly fooled."""
    fooled = fooled.clone()
    if not fooled.any():
        return fooled
    with torch.no_grad(), full_precision(x_adv):
        pred = model(x_adv[fooled]).argmax(1)
    fooled[fooled.clone()] = pred != y[fooled] if target is None else pred == target[fooled]
    return fooled
