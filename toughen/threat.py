"""Threat models: the L-inf and L2 balls of radius eps around an input, intersected with the
data bounds.

Everything an attack or a recipe needs from a threat model lives here, once: the random start,
the steepest-ascent direction, the projection, and the eps sanity check. All functions take
their device and dtype from the tensors passed in.

The invariant that matters: the perturbation ``delta`` that an attack keeps between steps always
satisfies ``lo <= x + delta <= hi``. Clamping only what is fed to the model,
``model((x + delta).clamp(lo, hi))``, lets ``delta`` wander outside the box where the clamp's
gradient is zero, and pixels at a bound (most MNIST pixels are 0) get stuck there: a model
evaluated that way looks far more robust than it is.
"""

from __future__ import annotations

import math

import torch

from toughen.errors import ToughenUsageError

NORMS = ("linf", "l2")
Bounds = tuple[float, float]


STEP_SIZE_FACTOR = 2.5  # Madry et al.'s 2.5 * eps / steps: enough to cross the ball from any start


def default_step_size(eps: float, steps: int) -> float:
    """The step size of an iterative attack when none is given: 2.5 * eps / steps (Madry et al.
    2018), so that ``steps`` steps can travel 2.5 radii, from one side of the ball to the other
    and back."""
    return STEP_SIZE_FACTOR * eps / max(steps, 1)


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ToughenUsageError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    return norm


def check_eps(eps: float, norm: str = "linf", bounds: Bounds = (0.0, 1.0), dim: int | None = None) -> float:
    """Reject an eps that cannot be what the user meant, with a hint.

    For L-inf, eps >= the width of the data range makes every input reachable; it almost always
    means eps was given in 0-255 units. For L2 the ball covers the whole box once
    eps >= width * sqrt(dim).
    """
    check_norm(norm)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps):
        raise ToughenUsageError(f"eps must be a finite number, got {eps!r}")
    if eps < 0:
        raise ToughenUsageError(f"eps must be >= 0, got {eps}")
    width = bounds[1] - bounds[0]
    if norm == "linf" and eps >= width:
        hint = f" (did you mean {eps:g}/255?)" if eps >= 1 and width <= 1 else ""
        raise ToughenUsageError(
            f"eps={eps:g} covers the whole data range [{bounds[0]:g}, {bounds[1]:g}]; "
            f"eps is in the units of the data{hint}"
        )
    if norm == "l2" and dim is not None and eps >= width * math.sqrt(dim):
        raise ToughenUsageError(
            f"L2 eps={eps:g} covers the whole data range for inputs of {dim} values; "
            "eps is in the units of the data"
        )
    return float(eps)


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per example (shape (N,)) shaped to broadcast against the batch ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped to broadcast against t."""
    return per_example(t.flatten(1).norm(dim=1), t)


def clamp_to_bounds(x: torch.Tensor, delta: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """The delta that keeps x + delta inside the data bounds. Since x is inside the bounds, this
    moves every coordinate of delta towards 0, so it never leaves the ball it was in."""
    return (x + delta).clamp(bounds[0], bounds[1]) - x


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The closest point to delta inside the norm ball of radius eps."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def random_start(
    x: torch.Tensor, eps: float, norm: str, bounds: Bounds, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A delta drawn uniformly from the ball (then clamped to the bounds)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2 * u - 1) * eps
    else:
        # Uniform in the L2 ball: a uniform direction, radius eps * U^(1/d).
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _per_example_norm(direction).clamp_min(1e-12)
        d = math.prod(x.shape[1:])  # not x[0].numel(): the batch may be empty
        u = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
        radius = eps * u.pow(1.0 / d)
        delta = direction * per_example(radius, x)
    return clamp_to_bounds(x, delta, bounds)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: sign(g) for L-inf, g / ||g||_2 for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_example_norm(grad).clamp_min(1e-12)


def step(
    x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, step_size: float, eps: float, norm: str, bounds: Bounds
) -> torch.Tensor:
    """One projected steepest-ascent step; the result keeps x + delta inside the bounds."""
    delta = delta + step_size * ascent_direction(grad, norm)
    return clamp_to_bounds(x, project(delta, eps, norm), bounds)
