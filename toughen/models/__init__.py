"""Classifiers that take inputs in the data bounds and return logits.

``build_model(name, input_shape, num_classes, mean=..., std=...)``: when mean and std are given,
the model's first layer is :class:`Normalize`, so the model itself always takes raw [0, 1] inputs
and attacks work in pixel space. A ``name`` of the form ``timm:NAME`` or ``MODULE:FUNCTION`` is a
pretrained backbone (:mod:`toughen.models.backbone`), which normalizes with its own statistics.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from toughen.models import convnets as _convnets  # noqa: F401  (registers the models)
from toughen.models import resnets as _resnets  # noqa: F401
from toughen.models._registry import MODELS
from toughen.models.backbone import build_backbone, is_backbone
from toughen.models.layers import Normalize


def list_models() -> list[str]:
    return MODELS.names()


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> nn.Module:
    if is_backbone(name):  # the backbone's own mean and std, not the dataset's (see toughen.models.backbone)
        return build_backbone(name, input_shape, num_classes, **options)
    net = MODELS.get(name)(input_shape=tuple(input_shape), num_classes=num_classes, **options)
    if mean is None:
        return net
    return nn.Sequential(Normalize(mean, std), net)


__all__ = ["MODELS", "Normalize", "build_model", "is_backbone", "list_models"]
