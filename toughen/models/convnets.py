"""Small networks for MNIST-sized inputs."""

from __future__ import annotations

import math

from torch import nn

from toughen.models._registry import MODELS


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: int = 256, depth: int = 2) -> nn.Module:
    """A ReLU multilayer perceptron with ``depth`` hidden layers of width ``hidden``."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("small_cnn")
def small_cnn(input_shape: tuple[int, int, int], num_classes: int, width: int = 1,
              batchnorm: bool = False) -> nn.Module:
    """The MNIST network of Madry et al. (2018): conv5x5(32) - pool - conv5x5(64) - pool -
    fc(1024) - fc(classes). ``width`` multiplies the channel counts; ``batchnorm`` puts a
    BatchNorm after each convolution (not in the paper: a small model for BatchNorm's questions,
    such as ``attack_bn``)."""
    c, h, w = input_shape
    c1, c2 = 32 * width, 64 * width

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 5, padding=2), *([nn.BatchNorm2d(cout)] if batchnorm else []), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(
        *conv(c, c1), *conv(c1, c2),
        nn.Flatten(),
        nn.Linear(c2 * (h // 4) * (w // 4), 1024), nn.ReLU(),
        nn.Linear(1024, num_classes),
    )
