"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019, "Certified Adversarial Robustness via
Randomized Smoothing"): the smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c) is
robust in L2 within radius sigma * Phi^-1(p_A) around x, where p_A is the probability of its top
class. CERTIFY estimates it from samples, so the guarantee holds with probability 1 - alpha:

1. n0 noisy copies of x choose the top class c_A (a separate sample, so the choice does not bias
   the estimate);
2. n more noisy copies count n_A votes for c_A; p_A's one-sided (1 - alpha) Clopper-Pearson lower
   bound p is taken;
3. if p < 1/2, abstain; else predict c_A with the certified radius sigma * Phi^-1(p).

Works for any classifier, but certifies the smoothed one, g, not f: train f under the same noise
(the ``augment`` recipe with ``--noise-std sigma``). The noise is not clipped to the data bounds,
as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from toughen.errors import ToughenUsageError, check_number
from toughen.logits import logits_of

ABSTAIN = -1


@dataclass
class Smoothed:
    """CERTIFY's answer per example: the smoothed prediction (ABSTAIN = -1) and its certified L2
    radius (0 where it abstains)."""

    prediction: torch.Tensor
    radius: torch.Tensor

    def certified_accuracy(self, y: torch.Tensor, radius: float) -> float:
        """Examples predicted right with a certified radius of at least ``radius``."""
        return ((self.prediction == y) & (self.radius >= radius)).float().mean().item()

    def abstain_rate(self) -> float:
        return (self.prediction == ABSTAIN).float().mean().item()


def clopper_pearson_lower(successes: torch.Tensor, trials: int, alpha: float) -> torch.Tensor:
    """The one-sided (1 - alpha) lower confidence bound on a binomial proportion: the alpha
    quantile of Beta(k, n - k + 1) (0 when k = 0)."""
    from scipy.stats import beta

    k = successes.cpu().double().numpy()
    lower = beta.ppf(alpha, k, trials - k + 1)
    return torch.nan_to_num(torch.as_tensor(lower, dtype=torch.float64), nan=0.0)


def _votes(model: nn.Module, x: torch.Tensor, num: int, sigma: float, batch_size: int, num_classes: int,
           generator: torch.Generator | None) -> torch.Tensor:
    """(num_classes,) counts of f's predictions on ``num`` noisy copies of one example x."""
    counts = torch.zeros(num_classes, dtype=torch.long)
    left = num
    while left > 0:
        take = min(batch_size, left)
        batch = x.unsqueeze(0).expand(take, *x.shape)
        noise = torch.randn(batch.shape, generator=generator, device=x.device, dtype=x.dtype)
        predictions = logits_of(model, batch + sigma * noise).argmax(1)
        counts += torch.bincount(predictions.cpu(), minlength=num_classes)
        left -= take
    return counts


@torch.no_grad()
def smoothed_certify(model: nn.Module, x: torch.Tensor, *, sigma: float, n0: int = 100, n: int = 1000,
                     alpha: float = 0.001, batch_size: int = 1000, generator: torch.Generator | None = None,
                     progress: bool = False) -> Smoothed:
    """CERTIFY for each example of ``x``; see the module's docstring. ``model`` is f, in eval mode."""
    check_number("sigma", sigma, low=0, above=True)
    check_number("n0", n0, low=1, whole=True)
    check_number("n", n, low=1, whole=True)
    check_number("alpha", alpha, low=0, high=0.5, above=True)
    if len(x) == 0:
        return Smoothed(torch.zeros(0, dtype=torch.long), torch.zeros(0))
    from tqdm.auto import tqdm

    num_classes = logits_of(model, x[:1]).shape[1]
    predictions, radii = [], []
    normal = torch.distributions.Normal(0.0, 1.0)
    for xi in tqdm(x, desc=f"smoothing sigma={sigma:g}", disable=not progress, leave=False):
        top = int(_votes(model, xi, n0, sigma, batch_size, num_classes, generator).argmax())
        votes = _votes(model, xi, n, sigma, batch_size, num_classes, generator)[top]
        p_lower = float(clopper_pearson_lower(votes.view(1), n, alpha)[0])
        if p_lower < 0.5:
            predictions.append(ABSTAIN)
            radii.append(0.0)
        else:
            predictions.append(top)
            radii.append(sigma * float(normal.icdf(torch.tensor(min(p_lower, 1 - 1e-12)))))
    return Smoothed(torch.tensor(predictions), torch.tensor(radii))


def radius_grid(sigma: float, n: int, alpha: float, points: int = 9) -> list[float]:
    """Radii at which to report certified accuracy: 0 up to the largest radius n samples can
    certify at this sigma and alpha (all n votes for the top class)."""
    if n < 1:
        raise ToughenUsageError("n must be at least 1")
    p_max = alpha ** (1.0 / n)  # Clopper-Pearson lower bound with k = n
    top = sigma * float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p_max)))
    return [round(top * i / (points - 1), 4) for i in range(points)] if math.isfinite(top) and top > 0 else [0.0]
