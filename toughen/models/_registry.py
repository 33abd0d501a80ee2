"""The model registry, a leaf that the model modules register into."""

from __future__ import annotations

from typing import Callable

from torch import nn

from toughen._registry import Registry

# A builder takes (input_shape=(C, H, W), num_classes, **options) and returns the bare network.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
