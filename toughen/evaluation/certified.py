"""Certification of a run directory's model, and the bracket it makes with an attack:

    certified accuracy  <=  true robust accuracy  <=  attacked robust accuracy

``certify_run`` is what `toughen certify RUN_DIR` does; ``bracket`` joins a certification with an
attack's per-example result (`toughen eval --certify`). Both record a row in evaluations.jsonl.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from toughen.certify import certify

# A bracket wider than this many points of accuracy is called loose, with the reason.
LOOSE = 0.10


def certificate_row(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON row of a certification: its numbers, without the per-example tensors."""
    row = {k: v for k, v in result.items() if not isinstance(v, torch.Tensor)}
    row["certified_n"] = int(result["certified"].sum())
    return row


def run_certification(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, method: str,
                      bounds: tuple[float, float], options: dict[str, Any], progress: bool) -> dict[str, Any]:
    return certify(model, x, y, eps=eps, norm=norm, method=method, bounds=bounds, progress=progress, **options)


def bracket(certified: dict[str, Any], robust: torch.Tensor, attacked_accuracy: float) -> dict[str, Any]:
    """The bracket of a certification and an attack on the same examples, and what it says.

    ``robust`` is the attack's per-example mask (still correct after the attack). A certified
    example the attack fooled would mean a wrong certificate or a wrong attack: counted in
    ``contradictions`` (0 for sound bounds), never hidden."""
    cert_mask = certified["certified"].to(robust.device)
    low, high = certified["certified_accuracy"], attacked_accuracy
    width = high - low
    found = {"certified_accuracy": low, "attacked_accuracy": high, "width": width,
             "contradictions": int((cert_mask & ~robust).sum())}
    if certified["method"] == "smoothing":
        found["note"] = ("randomized smoothing certifies the smoothed classifier, not the model the attack ran on: "
                         "the two numbers describe different classifiers")
    elif width > LOOSE:
        found["note"] = (f"the {certified['method']} bound is loose for this model: the true robust accuracy lies "
                         f"anywhere from {100 * low:.1f}% to {100 * high:.1f}% ({100 * width:.1f} points). "
                         "Models not trained for certification (ibp, crown_ibp) are rarely certified by bounds, "
                         "however robust they are")
    else:
        found["note"] = f"the true robust accuracy is within {100 * width:.1f} points of {100 * low:.1f}%"
    return found
