"""The run directory: what a training run leaves behind, written atomically, and how to load it.

    RUN_DIR/config.yaml        the resolved TrainConfig, the data's shape and normalization,
                               the toughen version and git revision
    RUN_DIR/metrics.jsonl      one JSON object per epoch
    RUN_DIR/model.safetensors  the weights (loads without executing code)
    RUN_DIR/summary.json       the headline numbers
    RUN_DIR/evaluations.jsonl  one JSON object per `toughen eval` (the report reads these)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from toughen.errors import ToughenUsageError

RUN_FILES = ("config.yaml", "metrics.jsonl", "model.safetensors", "summary.json", "evaluations.jsonl",
             "model_last.safetensors", "checkpoint.pt")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename: a crash never leaves a
    half-written file under ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def append_jsonl(path: Path, obj: dict) -> None:
    """Append one line. The line is written whole with one write call; readers skip a torn last line."""
    with Path(path).open("a") as f:
        f.write(json.dumps(obj) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn final line from a killed process
    return rows


def record_evaluation(run_dir: str | Path, result: dict) -> None:
    """Append an evaluation's result (JSON-serializable values only) to RUN_DIR/evaluations.jsonl."""
    import time

    append_jsonl(Path(run_dir) / "evaluations.jsonl", {**result, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    model.load_state_dict(load_file(str(path)))
    return model


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def prepare_run_dir(out: str | Path, overwrite: bool) -> Path:
    """Create ``out``; refuse a non-empty one unless ``overwrite``, which then removes only
    toughen's own files (anything else the user put there stays)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ToughenUsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ToughenUsageError(f"--out {out} exists and is not empty; pass --overwrite or choose another directory")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ToughenUsageError(f"{run_dir} is not a toughen run directory (no config.yaml)")
    return yaml.safe_load(path.read_text())


def run_weights(run_dir: str | Path) -> Path:
    """The path of a run's model.safetensors, or a usage error saying training did not finish."""
    weights = Path(run_dir) / "model.safetensors"
    if not weights.is_file():
        raise ToughenUsageError(f"{run_dir} has no model.safetensors; did training finish?")
    return weights


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run directory, in eval mode, taking inputs in the data bounds
    (normalization included).

    Example:
        >>> model = toughen.load("runs/demo")
        >>> logits = model(x)  # x in [0, 1]
    """
    from toughen.models import build_model

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    weights = run_weights(run_dir)
    data = cfg["data_info"]
    train = cfg["train"]
    model = build_model(
        train["model"], data["input_shape"], data["num_classes"],
        mean=data["mean"] if train["normalize"] else None, std=data["std"] if train["normalize"] else None,
        **train["model_options"],
    )
    load_weights(model, weights)
    return model.to(device).eval()
