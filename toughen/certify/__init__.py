"""Certified robustness: a lower bound on robust accuracy, beside the attacks' upper bound.

An attack that fails to fool an example shows nothing; a certificate proves that no input of the
threat ball changes its prediction. So for every model and eps:

    certified accuracy  <=  true robust accuracy  <=  attacked robust accuracy

and the gap between the two ends (the bracket) is what the evaluation does not know.

    from toughen.certify import certify
    certify(model, x, y, eps=0.1, method="ibp")["certified_accuracy"]
    certify(model, x, y, eps=0.5, norm="l2", method="smoothing", sigma=0.5)

Methods: ``ibp`` and ``crown`` (deterministic bounds, :mod:`toughen.certify.bounds`) certify the
model itself, in L-inf or L2; ``smoothing`` (:mod:`toughen.certify.smoothing`) certifies the
Gaussian-smoothed model in L2, with probability 1 - alpha.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from toughen.certify.bounds import METHODS as BOUND_METHODS
from toughen.certify.bounds import margin_lower_bounds, output_bounds, sequential_layers, spec_bounds
from toughen.certify.smoothing import ABSTAIN, Smoothed, radius_grid, smoothed_certify
from toughen.errors import ToughenUsageError
from toughen.logits import logits_of
from toughen.threat import check_eps

METHODS = BOUND_METHODS + ("smoothing",)


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
            method: str = "ibp", bounds: tuple[float, float] = (0.0, 1.0), batch_size: int | None = None,
            sigma: float | None = None, n0: int = 100, samples: int = 1000, alpha: float = 0.001, seed: int = 0,
            progress: bool = False) -> dict[str, Any]:
    """Which examples of ``x`` are provably robust at ``eps``; the model is put in eval mode.

    Returns method, eps, norm, n, clean_accuracy, certified_accuracy, seconds and ``certified``
    (a bool tensor per example). ``smoothing`` (L2 only; ``samples`` is CERTIFY's n) also returns sigma, n0, samples, alpha,
    abstain_rate, ``radius`` (per example) and ``curve``: [{radius, certified_accuracy}] up to the
    largest radius its samples can certify."""
    if method not in METHODS:
        raise ToughenUsageError(f"unknown certification method {method!r}; choose one of: {', '.join(METHODS)}")
    check_eps(eps, norm, bounds)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        clean = torch.cat([logits_of(model, xb).argmax(1) for xb in x.split(256)]) == y if len(x) else \
            torch.zeros(0, dtype=torch.bool)
    result: dict[str, Any] = {"method": method, "eps": eps, "norm": norm, "n": len(x),
                              "clean_accuracy": clean.float().mean().item() if len(x) else 0.0}
    if method == "smoothing":
        if norm != "l2":
            raise ToughenUsageError("randomized smoothing certifies L2 radii: use --norm l2 (or method ibp/crown "
                                    "for L-inf)")
        if sigma is None:
            raise ToughenUsageError("randomized smoothing needs the noise level --sigma (the noise std the model "
                                    "was trained with)")
        smoothed = smoothed_certify(model, x, sigma=sigma, n0=n0, n=samples, alpha=alpha,
                                    generator=torch.Generator(device=x.device).manual_seed(seed), progress=progress)
        certified = (smoothed.prediction == y.cpu()) & (smoothed.radius >= eps)
        result.update(sigma=sigma, n0=n0, samples=samples, alpha=alpha, abstain_rate=smoothed.abstain_rate(),
                      radius=smoothed.radius, prediction=smoothed.prediction,
                      curve=[{"radius": r, "certified_accuracy": smoothed.certified_accuracy(y.cpu(), r)}
                             for r in radius_grid(sigma, samples, alpha)])
    else:
        sequential_layers(model)  # unsupported layers: one clear error before any work
        size = batch_size or (256 if method == "ibp" else 32)
        parts = []
        with torch.no_grad():
            for xb, yb in zip(x.split(size), y.split(size)):
                parts.append((margin_lower_bounds(model, xb, yb, eps=eps, norm=norm, bounds=bounds,
                                                  method=method) > 0).all(dim=1))
        certified = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
    result["certified"] = certified
    result["certified_accuracy"] = certified.float().mean().item() if len(x) else 0.0
    result["seconds"] = time.perf_counter() - start
    return result


__all__ = ["ABSTAIN", "METHODS", "Smoothed", "certify", "margin_lower_bounds", "output_bounds", "radius_grid",
           "smoothed_certify", "spec_bounds"]
