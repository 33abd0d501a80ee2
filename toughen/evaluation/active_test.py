"""The binarization test: an *active* test of the attacks themselves (Zimmermann, Brendel, Tramer
and Carlini 2022, "Increasing Confidence in Adversarial Robustness Evaluations", NeurIPS).

The audit's checks look for symptoms of masked gradients. This test instead builds cases in which
an adversarial example is known to exist, and asks whether an attack finds it. For one input x:

1. Draw ``n_inner`` points uniformly in the ball of radius 0.95 eps around x (x itself among
   them), labelled 0, and one *boundary point* x' at distance eps (a random vertex of the L-inf
   ball, a random direction for L2), clamped to the data bounds so it lies in the threat model,
   labelled 1.
2. Read the model's features at all of them: by default the input of the last ``nn.Linear`` the
   forward pass calls (the penultimate layer). The new classifier keeps everything below that
   layer, so whatever hides gradients there (a non-differentiable preprocessing, a saturated
   block, a wrapper with zero backward) hides them in the test too.
3. Fit a new 2-way linear readout on those features with x and the inner points in class 0 and
   x' in class 1. A readout that does not separate them makes the case invalid (it is redrawn, up
   to ``attempts`` times).
4. Attack readout(features(.)) at x with label 0. Since x' lies in the threat model and is in
   class 1, an adversarial example exists: an attack *passes* the case when it returns an input
   of class 1 inside the ball, and *fails* it otherwise.

A sound attack passes (nearly) every valid case. A gradient attack that fails cases a
gradient-free one passes cannot be trusted on this model; an attack that does no better than
``random_pass_fraction`` (the cases in which ``n_inner`` random points in the ball already hit
class 1) is not searching at all. The test also grades honest attacks: the binarized loss has
local maxima, so PGD from one random start misses some cases that APGD or restarts find.

    result = binarization_test(model, x[:20], y[:20], [Attack("pgd", {"steps": 20, "restarts": 3}),
                               Attack("square", {"n_queries": 1000})], eps=0.1)
    result.pass_fraction, result.random_pass_fraction  # per attack, and the baseline

Why the penultimate layer and not the logits: ten logits cannot separate a few hundred points in
general position, while a wide penultimate layer (1024 features for ``small_cnn``) can, so the
readout can be fitted in closed form and almost every case is valid. ``feature_layer="logits"``
uses the model's outputs instead (for a model whose last ``nn.Linear`` is not its readout).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from toughen import threat
from toughen.attacks import Attack
from toughen.errors import ToughenUsageError, check_number
from toughen.evaluation.cascade import model_device, per_batch
from toughen.logits import logits_of

INNER_RADIUS = 0.95  # the inner points' ball, relative to eps: the paper's gap between the two classes
FEATURE_BATCH = 256  # points per forward pass when reading features
LOGIT_CAP = 10.0  # the readout's largest logit difference on its training points (when the gap allows)


def default_attacks(steps: int = 20, n_queries: int = 1000) -> list[Attack]:
    """The attacks ``toughen audit --active-test`` runs: PGD and APGD (cross-entropy: the binary
    readout has two classes, too few for DLR) with ``steps`` steps, and Square with ``n_queries``."""
    return [Attack("pgd", {"steps": steps}), Attack("apgd", {"steps": steps}),
            Attack("square", {"n_queries": n_queries})]


@dataclass(frozen=True)
class ActiveTestResult:
    """What :func:`binarization_test` found. ``pass_fraction`` maps each attack's label to the
    fraction of valid cases it passed (None when no case is valid); ``cases`` has one dict per
    example: ``index``, ``valid``, ``reason`` (why not), ``attempts``, ``correct`` (the original
    model's clean prediction), ``clean_margin`` and ``boundary_margin`` (the readout's logit
    difference z1 - z0 at x and at x'), ``random_pass``, and per attack ``passed`` and ``margin``
    (the logit difference at the attack's result: > 0 is class 1); ``seconds`` the whole test."""

    eps: float
    norm: str
    feature_layer: str
    attacks: tuple[str, ...]
    n_cases: int
    n_valid: int
    pass_fraction: dict[str, float | None]
    random_pass_fraction: float | None
    cases: tuple[dict[str, Any], ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, for JSON."""
        out = asdict(self)
        out["attacks"], out["cases"] = list(self.attacks), list(self.cases)
        return out


class Binarized(nn.Module):
    """``model``'s features at ``layer`` (its input; ``None``: the model's logits) read out by a
    fixed 2-way linear layer. Gradients flow through the original model up to ``layer``."""

    def __init__(self, model: nn.Module, layer: nn.Module | None, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.model, self.layer = model, layer
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.training = model.training  # as the attacks see it; not .train(), which would reset the model's modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = features(self.model, self.layer, x)
        return f @ self.weight.to(f.dtype).t() + self.bias.to(f.dtype)


def features(model: nn.Module, layer: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """The input of ``layer`` in ``model``'s forward pass on ``x`` (its last call, if several),
    flattened to ``(N, features)``; the model's logits when ``layer`` is None. The hook lives
    only for this one pass, so the model is left as it was."""
    if layer is None:
        return logits_of(model, x).flatten(1)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    if not seen:
        raise ToughenUsageError("the feature layer was not called by the model's forward pass; pass feature_layer= "
                                "the name of a module the forward pass uses, or 'logits'")
    return seen[-1].flatten(1)


def find_feature_layer(model: nn.Module, x: torch.Tensor, feature_layer: str | nn.Module | None
                       ) -> tuple[nn.Module | None, str]:
    """The module whose input the test reads, and its name: ``feature_layer`` (a module, the name
    of one in ``model.named_modules()``, or "logits"), or by default the last ``nn.Linear`` that a
    forward pass on ``x`` calls."""
    names = {m: name for name, m in model.named_modules()}
    if feature_layer == "logits":
        return None, "logits"
    if isinstance(feature_layer, nn.Module):
        return feature_layer, names.get(feature_layer, type(feature_layer).__name__)
    if isinstance(feature_layer, str):
        modules = dict(model.named_modules())
        if feature_layer not in modules:
            raise ToughenUsageError(f"the model has no module {feature_layer!r}; choose 'logits' or one of: "
                                    f"{', '.join(n for n in modules if n)}")
        return modules[feature_layer], feature_layer
    if feature_layer is not None:
        raise ToughenUsageError(f"feature_layer must be a module, a module's name or 'logits', got {feature_layer!r}")
    called: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda module, args: called.append(module))
               for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not called:
        raise ToughenUsageError("the model calls no nn.Linear, so its penultimate layer is unknown: pass "
                                "feature_layer= the name of the module whose input is the feature vector, or 'logits'")
    return called[-1], names[called[-1]]


def fit_readout(f_inner: torch.Tensor, f_boundary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A 2-way linear readout (weight ``(2, d)``, bias ``(2,)``) whose logit difference z1 - z0 is
    <= -1 on every row of ``f_inner`` and >= +1 on every row of ``f_boundary`` (or of that sign,
    when the rows spread beyond +-``LOGIT_CAP``); None when the fit does not separate them.

    Closed form, no optimizer to tune: the minimum-norm least-squares fit of the targets -1 and
    +1 (in the dual, ``w = F^T (F F^T + lambda I)^-1 t`` with a tiny ridge lambda, on centred
    features). With more features than points in general position it interpolates, so every point
    lands on its target. The bias is then centred in the gap between the two classes and the
    difference scaled so the gap is [-1, 1]. Computed in float64 on the CPU (a few hundred rows).
    """
    f = torch.cat([f_inner, f_boundary]).detach().double().cpu()
    n_in = len(f_inner)
    t = torch.cat([-torch.ones(n_in), torch.ones(len(f_boundary))]).double()
    mu = f.mean(0)
    fc = f - mu
    gram = fc @ fc.t()
    ridge = 1e-8 * gram.diagonal().mean().item() + 1e-30
    alpha = torch.linalg.solve(gram + ridge * torch.eye(len(f), dtype=f.dtype), t - t.mean())
    w = fc.t() @ alpha
    s = fc @ w
    top_inner, bottom_boundary = s[:n_in].max(), s[n_in:].min()
    if not bottom_boundary > top_inner:
        return None
    half_gap = (bottom_boundary - top_inner) / 2
    # Map the gap to [-1, 1], unless that puts a training point beyond +-LOGIT_CAP: a narrow gap in
    # a wide spread would saturate the attacks' softmax, masking gradients the model does not mask.
    scale = max(half_gap.item(), (s - top_inner - half_gap).abs().max().item() / LOGIT_CAP)
    w = w / scale
    b = -(top_inner + half_gap) / scale - mu @ w  # z1 - z0 = f @ w + b
    weight, bias = torch.stack([-w / 2, w / 2]), torch.stack([-b / 2, b / 2])
    return weight.to(f_inner.dtype), bias.to(f_inner.dtype)


def _boundary_point(x: torch.Tensor, eps: float, norm: str, bounds: threat.Bounds, generator) -> torch.Tensor:
    """A point at distance eps from x (before clamping to the bounds, which only moves it closer):
    a random vertex of the L-inf ball, or a random direction for L2."""
    if norm == "linf":
        sign = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        delta = eps * sign
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = eps * direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    return x + threat.clamp_to_bounds(x, delta, bounds)


def _in_threat(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str, bounds: threat.Bounds) -> bool:
    d = (x_adv - x).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    slack = 1e-5 * max(eps, 1.0)
    return bool((dist <= eps + slack).all() and x_adv.min() >= bounds[0] - slack and x_adv.max() <= bounds[1] + slack)


def _margin(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logit difference z1 - z0 of a binary model: > 0 means class 1."""
    with torch.no_grad():
        z = logits_of(model, x).float()
    return z[:, 1] - z[:, 0]


def _read(model: nn.Module, layer: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([features(model, layer, x[i:i + FEATURE_BATCH]) for i in range(0, len(x), FEATURE_BATCH)])


def _build_case(model, layer, x1, eps, norm, bounds, n_inner, generator) -> tuple[Binarized | None, torch.Tensor]:
    """Draw one case's points and fit its readout: (the binarized model, or None when the readout
    does not separate them, and the boundary point x')."""
    inner = x1 + threat.random_start(x1.expand(n_inner - 1, *x1.shape[1:]), INNER_RADIUS * eps, norm, bounds,
                                     generator)
    boundary = _boundary_point(x1, eps, norm, bounds, generator)
    f = _read(model, layer, torch.cat([x1, inner, boundary]))
    fit = fit_readout(f[:n_inner], f[n_inner:])
    if fit is None:
        return None, boundary
    return Binarized(model, layer, *fit), boundary


def binarization_test(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Attack | Callable[..., torch.Tensor]],
    *,
    eps: float,
    norm: str = "linf",
    bounds: threat.Bounds = (0.0, 1.0),
    n_inner: int = 256,
    feature_layer: str | nn.Module | None = None,
    attempts: int = 3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> ActiveTestResult:
    """Run the binarization test (Zimmermann et al. 2022) of ``attacks`` on ``model``, one case per
    example of ``x``.

    Args:
        model: maps inputs in ``bounds`` to logits, in eval mode (the caller's choice, as for
            attacks). It is not modified: its features are read with a hook that lives for one
            forward pass at a time.
        x, y: examples ``(N, ...)`` inside ``bounds`` and their labels; ``y`` only says whether
            the model was right on each (``cases[i]["correct"]``): the test is about the attack.
        attacks: :class:`toughen.attacks.Attack` values (or callables with the attack signature),
            each called as ``attack(binarized, x_i, 0, eps=, norm=, bounds=, generator=)``.
        eps, norm, bounds: the threat model the attacks are run under.
        n_inner: class-0 points per case (x and ``n_inner - 1`` random points within 0.95 eps).
            Keep it below the feature dimension, or the readout may not separate them.
        feature_layer: the module whose input is the feature vector (a module or its name), or
            "logits"; default the last ``nn.Linear`` the forward pass calls.
        attempts: draws per example before its case is declared invalid.
        generator: the source of all randomness (one seed is drawn from it, then each case and
            each (attack, case) gets a generator of its own on the model's device): the result is
            deterministic given its state. None: the global generator.

    Returns:
        :class:`ActiveTestResult`: per attack the fraction of valid cases passed, the random
        baseline, and per case the details.
    """
    threat.check_eps(eps, norm, bounds)
    if eps == 0:
        raise ToughenUsageError("the binarization test needs eps > 0: with eps = 0 no adversarial example can exist")
    check_number("n_inner", n_inner, low=2, whole=True)
    check_number("attempts", attempts, low=1, whole=True)
    if len(x) != len(y) or len(x) == 0:
        raise ToughenUsageError(f"x and y must be non-empty and of the same length, got {len(x)} and {len(y)}")
    if len(attacks) == 0:
        raise ToughenUsageError("give at least one attack to test")
    labels = [getattr(a, "label", getattr(a, "__name__", "attack")) for a in attacks]
    if len(set(labels)) != len(labels):
        raise ToughenUsageError(f"two attacks share a label ({', '.join(labels)}); give each different settings")
    start = time.perf_counter()
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    lo, hi = bounds
    if x.min() < lo or x.max() > hi:
        raise ToughenUsageError(f"x must lie inside the data bounds [{lo:g}, {hi:g}]: pass raw inputs")
    layer, layer_name = find_feature_layer(model, x[:1], feature_layer)
    with torch.no_grad():
        correct = (logits_of(model, x).argmax(1) == y).tolist()
    zero = torch.zeros(1, dtype=torch.long, device=device)
    # One seed drawn from ``generator``, then a generator of its own for each case's points and for
    # each (attack, case), as the cascade does: an attack's draws do not depend on how many random
    # numbers the attacks before it used, nor the cases on the attacks.
    seed = int(torch.randint(0, 2**31, (1,), generator=generator,
                             device=generator.device if generator is not None else "cpu"))
    generators = per_batch(seed, device)

    cases = []
    for i in tqdm(range(len(x)), desc="binarization test", disable=not progress, leave=False):
        x1 = x[i:i + 1]
        case: dict[str, Any] = {"index": i, "correct": correct[i], "valid": False, "reason": None}
        gen = generators(0, i)
        for attempt in range(1, attempts + 1):
            binarized, boundary = _build_case(model, layer, x1, eps, norm, bounds, n_inner, gen)
            case["attempts"] = attempt
            if binarized is None:
                case["reason"] = "the linear readout did not separate x' from the inner points"
                continue
            # The fit saw these very features; a second forward pass catches a randomized model.
            m_clean, m_boundary = _margin(binarized, torch.cat([x1, boundary])).tolist()
            case["clean_margin"], case["boundary_margin"] = m_clean, m_boundary
            if not (m_clean < 0 < m_boundary):
                case["reason"] = "the binarized model changed its mind on x or x' (is the model randomized?)"
                continue
            case["valid"], case["reason"] = True, None
            break
        if not case["valid"]:
            cases.append(case)
            continue
        # The baseline an attack must beat: as many random points in the whole ball as the readout saw.
        noise = x1 + threat.random_start(x1.expand(n_inner, *x1.shape[1:]), eps, norm, bounds, gen)
        case["random_pass"] = bool((_margin(binarized, noise) > 0).any())
        case["passed"], case["margin"] = {}, {}
        for k, (label, attack) in enumerate(zip(labels, attacks)):
            x_adv = attack(binarized, x1, zero, eps=eps, norm=norm, bounds=bounds, generator=generators(k + 1, i))
            margin = _margin(binarized, x_adv).item()
            case["margin"][label] = margin
            case["passed"][label] = margin > 0 and _in_threat(x1, x_adv, eps, norm, bounds)
        cases.append(case)

    valid = [c for c in cases if c["valid"]]
    fraction = {lab: (sum(c["passed"][lab] for c in valid) / len(valid) if valid else None) for lab in labels}
    random_fraction = sum(c["random_pass"] for c in valid) / len(valid) if valid else None
    return ActiveTestResult(eps=eps, norm=norm, feature_layer=layer_name, attacks=tuple(labels), n_cases=len(x),
                            n_valid=len(valid), pass_fraction=fraction, random_pass_fraction=random_fraction,
                            cases=tuple(cases), seconds=time.perf_counter() - start)


__all__ = ["ActiveTestResult", "Binarized", "binarization_test", "default_attacks", "features", "find_feature_layer",
           "fit_readout"]
