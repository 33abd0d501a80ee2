"""Per-epoch checkpoints for exact resume, written atomically.

RUN_DIR/checkpoint.pt holds everything the rest of training depends on: the model, the
optimizer, the grad scaler, the guard (its active recipe, best probe accuracy and last good
snapshot), what a recipe carries between batches (Free's perturbation), the best epoch's
weights, the metrics so far, and every random generator (torch's global one, the shuffle and
the attack generators). Only tensors, numbers, strings, lists and dicts: it loads with
``torch.load(weights_only=True)``, without executing code. The learning-rate and eps schedules
are pure functions of progress (toughen.train.schedules), so the epoch number is their state.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from toughen.errors import ToughenUsageError
from toughen.runs import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Serialize in memory, then write to a temporary file and rename: a kill at any moment
    leaves either the previous checkpoint or this one, never a torn file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, buffer.getvalue())


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The last complete epoch's state, or None when the run never completed an epoch."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError) as e:
        why = " ".join(str(e).split()) or f"{type(e).__name__}: it is empty or cut short"
        raise ToughenUsageError(f"{path} cannot be read ({why[:200]}); it is corrupted or was not written by this "
                                "version of toughen: train the run again") from e


def rng_state(shuffle: torch.Generator, attack: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(), "attack": attack.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], shuffle: torch.Generator, attack: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    attack.set_state(state["attack"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
