"""The resume file of a long evaluation (``toughen.evaluate(..., state_file=...)``).

It wraps the cascade rather than living in it: :func:`toughen.evaluate` writes it from the
cascade's ``on_batch`` and ``on_attack`` callbacks, and a rerun reads it back as a
:class:`~toughen.evaluation.cascade.Start`, the robust mask so far, the finished attacks' rows
and the precision chosen. Its JSON keys::

    key           a fingerprint of the model, data and settings (a file with another is ignored)
    per_attack    the result rows of the attacks done
    robust        the robust mask so far, as a string of 0 and 1
    expected      with draws > 1 (a randomized model): per example the fraction of draws right so far
    indicators    the counts behind the indicators of attack failure so far (toughen.evaluation.indicators)
    precision     the precision the evaluation chose (a resumed run goes on as it started)
    attack, todo, batches_done, seconds
                  only inside an attack: its index, the mask it started from, how many of its
                  batches are done and their seconds
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toughen.evaluation.cascade import Start
from toughen.precision import Precision


def pack(mask: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in mask.tolist())


def unpack(text: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, labels: list[str], eps, norm, bounds, seed,
                batch_size, surrogate: nn.Module | None = None) -> str:
    """A fingerprint of everything that decides the result, so a stale state file is never reused
    (with a transfer attack's surrogate, its weights too)."""
    h = hashlib.sha256()
    weights = list(model.state_dict().values()) + (list(surrogate.state_dict().values()) if surrogate else [])
    for t in weights + [x, y]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([labels, eps, norm, list(bounds), seed, batch_size]).encode())
    return h.hexdigest()[:32]


class State:
    """The resume file at ``path`` (None: no file, nothing saved), if its key is ``key()``; written
    atomically by :meth:`save`, removed by :meth:`clear` when the evaluation is done."""

    def __init__(self, path: Path | None, key: Callable[[], str]):
        self.path, self.key = path, key() if path is not None else ""  # hashing the model is not free
        self.data: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                data = {}
            if data.get("key") == self.key:
                self.data = data

    # ---- what a resumed evaluation starts from
    def per_attack(self) -> list[dict[str, Any]]:
        return list(self.data.get("per_attack", []))

    def robust(self, clean: torch.Tensor) -> torch.Tensor:
        return unpack(self.data["robust"]) if "robust" in self.data else clean.clone()

    def expected(self, right: torch.Tensor) -> torch.Tensor:
        """The fraction of draws right per example so far (randomized models): ``right`` (at the
        clean input) unless resuming."""
        return torch.tensor(self.data["expected"]) if "expected" in self.data else right.clone()

    def indicators(self) -> dict[str, Any] | None:
        """The indicators' counts of the batches done (None: starting, or a file from before them)."""
        return self.data.get("indicators")

    def precision(self) -> Precision | None:
        return Precision.from_dict(self.data["precision"]) if "precision" in self.data else None

    def start(self) -> tuple[Start, float]:
        """Where the cascade picks up, and the seconds already spent on the attack it resumes."""
        done = len(self.data.get("per_attack", []))
        if self.data.get("attack") != done:
            return Start(done), 0.0
        return (Start(done, unpack(self.data["todo"]), self.data.get("batches_done", 0)),
                self.data.get("seconds", 0.0))

    # ---- written as the evaluation goes
    def save(self, **data: Any) -> None:
        if self.path is None:
            return
        from toughen.runs import write_json

        self.data = {"key": self.key, **data}
        write_json(self.path, self.data)

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
