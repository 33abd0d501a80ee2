"""Adversarial examples to look at: the clean input, the perturbation made visible, the adversarial
input, with the true label and the model's prediction and confidence on each.

The examples are the first test input of each class in turn (then the second of each, ...),
chosen before and regardless of the attack, so the gallery shows the attack's typical effect
rather than a chosen success, across classes rather than n copies of the first class.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from toughen.report.collect import RunRecord
from toughen.report.plots import array_uri


def _tile(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(C, H, W) in [lo, hi] -> an image imsave draws: (H, W) grey or (H, W, 3) colour."""
    x = (x - lo) / (hi - lo)
    return np.clip(x[0] if x.shape[0] != 3 else x.transpose(1, 2, 0), 0, 1)


def _perturbation_tile(delta: np.ndarray, scale: float) -> tuple[np.ndarray, dict[str, Any]]:
    """The perturbation stretched so that ``scale`` (the largest |delta| shown) reaches the ends of
    the colour range: grey images through a diverging map, colour images around mid-grey."""
    if delta.shape[0] == 3:
        return np.clip(0.5 + delta.transpose(1, 2, 0) / (2 * scale), 0, 1), {}
    return delta[0], {"cmap": "RdBu_r", "vmin": -scale, "vmax": scale}


def pick_examples(y: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first example of each class, then the second of each, ..., ``n`` in all."""
    per_class = [torch.nonzero(y == c).flatten().tolist() for c in torch.unique(y).tolist()]
    order = [idx for rank in itertools.zip_longest(*per_class) for idx in rank if idx is not None]
    return torch.tensor(order[:n], dtype=torch.long)


def make_gallery(run: RunRecord, splits, *, n: int = 8, steps: int = 20, seed: int = 0,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """Attack ``n`` test inputs (see :func:`pick_examples`) of ``run``'s model with PGD at the run's eps and norm.

    Returns ``{"ok": True, "attack", "eps", "norm", "scale", "examples": [...]}`` or
    ``{"ok": False, "reason"}`` when the run has no weights or its inputs are not images.
    """
    from toughen.attacks import pgd
    from toughen.runs import load

    if not (run.path / "model.safetensors").is_file():
        return {"ok": False, "reason": "no model.safetensors (training has not finished)"}
    shape = run.data_info.get("input_shape") or []
    if len(shape) != 3:
        return {"ok": False, "reason": f"inputs of shape {tuple(shape)} are not images"}
    eps, norm = run.eps, run.norm
    bounds = tuple(run.data_info.get("bounds", (0.0, 1.0)))
    model = load(run.path, device=device)
    idx = pick_examples(splits.y_test, n)
    x, y = splits.x_test[idx].to(device), splits.y_test[idx].to(device)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=steps, bounds=bounds, generator=gen)
    with torch.no_grad():
        p_clean = torch.softmax(model(x).float(), 1)
        p_adv = torch.softmax(model(x_adv).float(), 1)
    names = run.class_names or [str(i) for i in range(p_clean.shape[1])]
    xs, advs = x.cpu().numpy(), x_adv.cpu().numpy()
    deltas = advs - xs
    scale = float(np.abs(deltas).max()) or 1.0  # one scale for the whole gallery keeps tiles comparable
    examples = []
    for i in range(len(xs)):
        conf_c, pred_c = p_clean[i].max(0)
        conf_a, pred_a = p_adv[i].max(0)
        d_img, d_opts = _perturbation_tile(deltas[i], scale)
        examples.append({
            "clean": array_uri(_tile(xs[i], *bounds), cmap="gray", vmin=0, vmax=1),
            "delta": array_uri(d_img, **d_opts),
            "adv": array_uri(_tile(advs[i], *bounds), cmap="gray", vmin=0, vmax=1),
            "true": names[int(y[i])],
            "clean_pred": names[int(pred_c)],
            "clean_conf": float(conf_c),
            "adv_pred": names[int(pred_a)],
            "adv_conf": float(conf_a),
            "clean_right": int(pred_c) == int(y[i]),
            "fooled": int(pred_c) == int(y[i]) and int(pred_a) != int(y[i]),
            "adv_right": int(pred_a) == int(y[i]),
            "linf": float(np.abs(deltas[i]).max()),
            "l2": float(np.sqrt((deltas[i] ** 2).sum())),
        })
    return {"ok": True, "attack": f"pgd-{steps}", "eps": eps, "norm": norm, "scale": scale,
            "examples": examples}
