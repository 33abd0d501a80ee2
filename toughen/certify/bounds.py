"""Sound bounds on a network's outputs over a whole threat ball: interval bound propagation (IBP)
and a linear relaxation (CROWN).

Both answer: for every input in the ball {x' : ||x' - x|| <= eps} inside the data bounds, what are
the smallest and largest values of chosen linear functions of the logits (``spec``: by default the
margins z_y - z_j)? If the smallest margin is positive for every j, no input of the ball changes
the prediction: the example is certified.

- IBP (Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training
  Verifiably Robust Models"; Mirman et al. 2018) pushes a box through the layers: an affine layer
  maps centre c and radius r to W c + b and |W| r, a monotone layer (ReLU, max-pooling) maps the
  two ends. Cheap (two forward passes) and differentiable, so it trains (the ``ibp`` recipe).
- CROWN (Zhang et al. 2018, "Efficient Neural Network Robustness Certification with General
  Activation Functions"; DeepPoly, Singh et al. 2019, for max-pooling) writes the spec as a linear
  function of the input by substituting each layer backwards: an affine layer exactly, a ReLU or a
  max-pool through a linear lower and upper bound that hold between its input's bounds. The input's
  ball then gives the bound in closed form (Hölder). The bounds of each nonlinear layer's input come
  from CROWN itself where that is cheap (``CROWN_WORK``), else from IBP (as in
  CROWN-IBP, Zhang et al. 2020); both are sound, so their intersection is used.

The layers bounded are those of toughen's registry: Normalize, Conv2d, Linear, ReLU, MaxPool2d
(non-overlapping windows), AvgPool2d, Flatten, BatchNorm in eval mode, Dropout in eval mode and
Identity, in an ``nn.Sequential`` (nested ones are flattened). Any other layer is refused by name.
L-inf balls are intersected with the data bounds; an L2 ball is bounded exactly through the first
affine layer (row norms) and by its enclosing box after that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toughen.errors import ToughenUsageError
from toughen.models.layers import Normalize
from toughen.threat import check_norm

METHODS = ("ibp", "crown")
# A nonlinear layer gets CROWN bounds on its input when its units times the widest activation
# behind it (the size of the backward substitution) is at most this; else it keeps its IBP box. The
# MLP's hidden layers (256 x 784) qualify; small_cnn's (1024 units x 25,088) would take ~10 s an
# example on 2 cores, so there only the output is bounded by CROWN (as in CROWN-IBP).
CROWN_WORK = 4_000_000
AFFINE = (nn.Linear, nn.Conv2d, nn.Flatten, Normalize, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d,
          nn.Dropout, nn.Identity)


@dataclass
class Box:
    """Elementwise bounds of one layer's input, for every example of the batch."""

    lower: torch.Tensor
    upper: torch.Tensor


def sequential_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model`` in order, nested ``nn.Sequential`` flattened; a clear error naming
    every layer the bounds cannot go through."""
    inner = getattr(model, "module", None)  # DistributedDataParallel, torch.compile
    if isinstance(inner, nn.Module) and not isinstance(model, nn.Sequential):
        model = inner
    if not isinstance(model, nn.Sequential):
        raise ToughenUsageError(f"certification bounds an nn.Sequential of supported layers; {type(model).__name__} "
                                "is not one (rebuild it as nn.Sequential)")
    layers: list[nn.Module] = []
    for m in model:
        layers += sequential_layers(m) if isinstance(m, nn.Sequential) else [m]
    bad = sorted({type(m).__name__ for m in layers if not isinstance(m, AFFINE + (nn.ReLU, nn.MaxPool2d))})
    bad += sorted({f"{type(m).__name__} in training mode" for m in layers
                   if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)) and m.training})
    bad += sorted({f"MaxPool2d({m.kernel_size}, stride={m.stride}, padding={m.padding})" for m in layers
                   if isinstance(m, nn.MaxPool2d) and not _plain_pool(m)})
    if bad:
        raise ToughenUsageError(f"certification cannot bound these layers: {', '.join(bad)}; supported: Linear, "
                                "Conv2d, ReLU, MaxPool2d (kernel = stride, no padding), AvgPool2d, Flatten, "
                                "Normalize, BatchNorm (eval mode), Dropout, Identity")
    return layers


def _plain_pool(m: nn.MaxPool2d) -> bool:
    pair = nn.modules.utils._pair
    return (pair(m.kernel_size) == pair(m.stride if m.stride is not None else m.kernel_size)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode)


def margin_spec(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K-1, K): row j is e_y - e_j for each class j != y, so spec @ logits are the margins."""
    eye = torch.eye(num_classes, device=y.device)
    others = torch.stack([torch.cat([torch.arange(c), torch.arange(c + 1, num_classes)]) for c in range(num_classes)])
    others = others.to(y.device)[y]  # (B, K-1)
    return eye[y][:, None, :] - eye[others]


# ---------------------------------------------------------------------------------------- IBP
def _abs_linear(layer: nn.Module, r: torch.Tensor, power: int = 1) -> torch.Tensor:
    """|W|^power r for an affine layer's linear part (no bias): the radius IBP pushes through it
    (power 2: the squared row norms, for an L2 ball's first layer)."""
    if isinstance(layer, nn.Linear):
        return F.linear(r, layer.weight.abs() ** power)
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(r, layer.weight.abs() ** power, None, layer.stride, layer.padding, layer.dilation,
                        layer.groups)
    if isinstance(layer, Normalize):
        return r / layer.std.to(r.dtype) ** power
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = (layer.weight if layer.affine else 1.0) / torch.sqrt(layer.running_var + layer.eps)
        shape = (1, -1) + (1,) * (r.dim() - 2)
        return r * scale.abs().view(shape) ** power
    if isinstance(layer, nn.AvgPool2d):  # nonnegative weights 1/k: |W|^2 = W / k
        area = nn.modules.utils._pair(layer.kernel_size)
        return layer(r) / (area[0] * area[1]) ** (power - 1)
    return layer(r)  # Flatten, Dropout (eval), Identity


def _input_box(x: torch.Tensor, eps: float, bounds: tuple[float, float]) -> Box:
    return Box((x - eps).clamp(min=bounds[0]), (x + eps).clamp(max=bounds[1]))


def _is_dense(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Linear, nn.Conv2d))


def ibp_boxes(layers: list[nn.Module], x: torch.Tensor, eps: float, norm: str,
              bounds: tuple[float, float]) -> list[Box]:
    """The box of every layer's input (and, last, of the output): boxes[i] bounds layers[i]'s input."""
    box = _input_box(x, eps, bounds)
    boxes = [box]
    l2_exact = norm == "l2"  # until the first dense layer: then its row norms give the L2 ball's exact image
    for i, layer in enumerate(layers):
        box = _ibp_layer(layer, box)
        if l2_exact and _is_dense(layer):
            box = _l2_first_dense(layers[: i + 1], x, eps, box)
            l2_exact = False
        boxes.append(box)
    return boxes


def _ibp_layer(layer: nn.Module, box: Box) -> Box:
    if isinstance(layer, (nn.ReLU, nn.MaxPool2d)):  # monotone
        return Box(layer(box.lower), layer(box.upper))
    centre, radius = (box.upper + box.lower) / 2, (box.upper - box.lower) / 2
    centre, radius = layer(centre), _abs_linear(layer, radius)
    return Box(centre - radius, centre + radius)


def _l2_first_dense(prefix: list[nn.Module], x: torch.Tensor, eps: float, box: Box) -> Box:
    """The L2 ball through affine layers that end with the first dense one: centre f(x), radius eps
    times each output's row norm, sqrt(|W|^2 applied to ones) (exact when the layers before the dense
    one are elementwise, which they are: Normalize, BatchNorm, Flatten). Intersected with ``box``,
    the image of the ball's enclosing box inside the data bounds."""
    centre = x
    squares = torch.ones_like(x)
    for layer in prefix:
        centre = layer(centre)
        squares = _abs_linear(layer, squares, power=2)
    radius = eps * squares.clamp(min=0).sqrt()
    return Box(torch.maximum(box.lower, centre - radius), torch.minimum(box.upper, centre + radius))


def ibp_spec_bounds(layers: list[nn.Module], x: torch.Tensor, spec: torch.Tensor, eps: float, norm: str,
                    bounds: tuple[float, float]) -> Box:
    """Bounds on spec @ logits, (B, S). The last Linear layer and the spec are merged into one
    (C W, C b) before the interval is taken, which is tighter than bounding the logits first."""
    boxes = ibp_boxes(layers[:-1], x, eps, norm, bounds)
    last, box = layers[-1], boxes[-1]
    centre, radius = (box.upper + box.lower) / 2, (box.upper - box.lower) / 2
    if isinstance(last, nn.Linear):
        w = spec @ last.weight  # (B, S, hidden)
        mid = torch.einsum("bsh,bh->bs", w, centre.flatten(1)) + (spec @ last.bias if last.bias is not None else 0)
        rad = torch.einsum("bsh,bh->bs", w.abs(), radius.flatten(1))
        return Box(mid - rad, mid + rad)
    out = _ibp_layer(last, box)
    centre, radius = ((out.upper + out.lower) / 2).flatten(1), ((out.upper - out.lower) / 2).flatten(1)
    mid, rad = torch.einsum("bsk,bk->bs", spec, centre), torch.einsum("bsk,bk->bs", spec.abs(), radius)
    return Box(mid - rad, mid + rad)


# ---------------------------------------------------------------------------------------- CROWN
@dataclass
class _Linear:
    """A linear function of some layer's input, one per spec row: A . z + bias, A (B, S, *shape)."""

    a: torch.Tensor
    bias: torch.Tensor  # (B, S)


def _back_affine(layer: nn.Module, f: _Linear, in_shape: tuple[int, ...]) -> _Linear:
    """Substitute an affine layer: A . (W z + b) = (A W) . z + A . b, A W by a vector-Jacobian product."""
    b, s = f.a.shape[:2]
    a = f.a.reshape(b * s, *f.a.shape[2:])
    graph = torch.is_grad_enabled()  # training through the bound (crown_ibp) needs the product's graph
    with torch.enable_grad():
        z = torch.zeros((b * s, *in_shape), device=a.device, dtype=a.dtype, requires_grad=True)
        out = layer(z)
        (a_in,) = torch.autograd.grad(out, z, a, create_graph=graph)
    offset = layer(torch.zeros((1, *in_shape), device=a.device, dtype=a.dtype))  # the layer's bias term
    bias = f.bias + (f.a * offset.unsqueeze(1)).flatten(2).sum(-1)
    return _Linear(a_in.reshape(b, s, *in_shape), bias)


def _relu_lines(box: Box) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CROWN's lines for ReLU on [l, u]: below, slope lo_slope through 0; above, slope up_slope
    with intercept up_bias (the chord from (l, 0) to (u, u) where the unit may change sign)."""
    l, u = box.lower, box.upper
    active, crossing = l >= 0, (l < 0) & (u > 0)
    chord = u / (u - l).clamp(min=1e-12)
    up_slope = torch.where(active, torch.ones_like(u), torch.where(crossing, chord, torch.zeros_like(u)))
    up_bias = torch.where(crossing, -chord * l, torch.zeros_like(u))
    # the lower line's slope: 0 or 1, whichever leaves the smaller area (Zhang et al. 2018)
    lo_slope = torch.where(active, torch.ones_like(u), torch.where(crossing & (u >= -l), torch.ones_like(u),
                                                                   torch.zeros_like(u)))
    return lo_slope, up_slope, up_bias


def _back_relu(f: _Linear, box: Box, lower: bool) -> _Linear:
    lo_slope, up_slope, up_bias = (t.unsqueeze(1) for t in _relu_lines(box))
    pos, neg = f.a.clamp(min=0), f.a.clamp(max=0)
    if lower:  # a positive coefficient takes the lower line, a negative one the upper
        return _Linear(pos * lo_slope + neg * up_slope, f.bias + (neg * up_bias).flatten(2).sum(-1))
    return _Linear(pos * up_slope + neg * lo_slope, f.bias + (pos * up_bias).flatten(2).sum(-1))


def _back_maxpool(layer: nn.MaxPool2d, f: _Linear, box: Box, lower: bool) -> _Linear:
    """max over a window lies above its input i* of largest lower bound and below the window's
    largest upper bound (or equals input i* when i*'s lower bound beats every other upper bound)."""
    k, stride = layer.kernel_size, layer.stride
    low_max, index = F.max_pool2d(box.lower, k, stride, return_indices=True)
    up_max = F.max_pool2d(box.upper, k, stride)
    others = box.upper.flatten(2).scatter(2, index.flatten(2), float("-inf")).view_as(box.upper)
    exact = (low_max >= F.max_pool2d(others, k, stride)).unsqueeze(1)
    a = f.a
    to_input = (a >= 0) | exact if lower else (a <= 0) | exact  # coefficients that take the line through i*
    bias = f.bias + torch.where(to_input, torch.zeros_like(a), a * up_max.unsqueeze(1)).flatten(2).sum(-1)
    kept = torch.where(to_input, a, torch.zeros_like(a))
    b, s = a.shape[:2]
    n, c, h, w = box.lower.shape
    spread = F.max_unpool2d(kept.reshape(b * s, *kept.shape[2:]),
                            index.unsqueeze(1).expand(b, s, *index.shape[1:]).reshape(b * s, *index.shape[1:]),
                            k, stride, output_size=(h, w))
    return _Linear(spread.reshape(b, s, c, h, w), bias)


def _concretize(f: _Linear, x: torch.Tensor, eps: float, norm: str, bounds: tuple[float, float],
                lower: bool) -> torch.Tensor:
    """The min (or max) of A . x' + bias over the ball around x (L-inf: inside the data bounds too)."""
    a = f.a.flatten(2)
    if norm == "linf":
        box = _input_box(x, eps, bounds)
        lo, hi = box.lower.flatten(1).unsqueeze(1), box.upper.flatten(1).unsqueeze(1)
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        value = (pos * lo + neg * hi) if lower else (pos * hi + neg * lo)
        return value.sum(-1) + f.bias
    centre = torch.einsum("bsn,bn->bs", a, x.flatten(1))
    spread = eps * a.norm(dim=-1)  # Hölder: the dual of L2 is L2 (the data bounds left out: still sound)
    return centre + f.bias + (-spread if lower else spread)


def _crown(layers: list[nn.Module], boxes: list[Box], shapes: list[tuple[int, ...]], x: torch.Tensor,
           a: torch.Tensor, eps: float, norm: str, bounds: tuple[float, float]) -> Box:
    """Bounds on A . (output of ``layers``) over the ball, substituting backwards to the input."""
    results = []
    for lower in (True, False):
        f = _Linear(a, torch.zeros(a.shape[:2], device=a.device, dtype=a.dtype))
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            if isinstance(layer, nn.ReLU):
                f = _back_relu(f, boxes[i], lower)
            elif isinstance(layer, nn.MaxPool2d):
                f = _back_maxpool(layer, f, boxes[i], lower)
            else:
                f = _back_affine(layer, f, shapes[i])
        results.append(_concretize(f, x, eps, norm, bounds, lower))
    return Box(*results)


def crown_spec_bounds(layers: list[nn.Module], x: torch.Tensor, spec: torch.Tensor, eps: float, norm: str,
                      bounds: tuple[float, float], *, work: int = CROWN_WORK) -> Box:
    """Bounds on spec @ logits, (B, S), by CROWN; the inputs of nonlinear layers are bounded by
    CROWN too where units x widest activation behind <= ``work`` (0: IBP only, as CROWN-IBP does)."""
    shapes, z = [], x
    with torch.no_grad():
        for layer in layers:
            shapes.append(tuple(z.shape[1:]))
            z = layer(z)
    boxes = [_input_box(x, eps, bounds)]
    box = boxes[0]
    l2_exact = norm == "l2"
    for i, layer in enumerate(layers):
        if isinstance(layer, (nn.ReLU, nn.MaxPool2d)):
            units = box.lower[0].numel()
            widest = max(math.prod(shape) for shape in shapes[: i + 1])
            if units * widest <= work and i > _first_nonlinear(layers):
                eye = torch.eye(units, device=x.device, dtype=x.dtype).view(1, units, *shapes[i])
                tight = _crown(layers[:i], boxes, shapes, x, eye.expand(len(x), *eye.shape[1:]), eps, norm, bounds)
                box = Box(torch.maximum(box.lower, tight.lower.view_as(box.lower)),
                          torch.minimum(box.upper, tight.upper.view_as(box.upper)))
                boxes[i] = box
        box = _ibp_layer(layer, box)
        if l2_exact and _is_dense(layer):
            box = _l2_first_dense(layers[: i + 1], x, eps, box)
            l2_exact = False
        boxes.append(box)
    return _crown(layers, boxes, shapes, x, spec, eps, norm, bounds)


def _first_nonlinear(layers: list[nn.Module]) -> int:
    # Before it, only affine layers: its input's IBP box is already exact (L-inf) or exact for the ball (L2).
    return next((i for i, m in enumerate(layers) if isinstance(m, (nn.ReLU, nn.MaxPool2d))), len(layers))


def spec_bounds(model: nn.Module, x: torch.Tensor, spec: torch.Tensor, *, eps: float, norm: str = "linf",
                bounds: tuple[float, float] = (0.0, 1.0), method: str = "ibp") -> Box:
    """Sound lower and upper bounds, (B, S), on ``spec @ model(x')`` for every x' in the ball."""
    check_norm(norm)
    if method not in METHODS:
        raise ToughenUsageError(f"unknown bound method {method!r}; choose one of: {', '.join(METHODS)}")
    layers = sequential_layers(model)
    if method == "ibp":
        return ibp_spec_bounds(layers, x, spec, eps, norm, bounds)
    return crown_spec_bounds(layers, x, spec, eps, norm, bounds)


def output_bounds(model: nn.Module, x: torch.Tensor, **kwargs) -> Box:
    """Bounds on each logit over the ball, (B, K)."""
    with torch.no_grad():
        k = model(x[:1]).shape[1]
    spec = torch.eye(k, device=x.device, dtype=x.dtype).expand(len(x), k, k)
    return spec_bounds(model, x, spec, **kwargs)


def margin_lower_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """Lower bounds, (B, K-1), on z_y - z_j for every other class j over the ball: all positive
    means no input of the ball is classified otherwise."""
    with torch.no_grad():
        k = model(x[:1]).shape[1]
    return spec_bounds(model, x, margin_spec(y, k).to(x.dtype), **kwargs).lower
