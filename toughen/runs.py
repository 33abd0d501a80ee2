"""The run directory: what a training run leaves behind, written atomically, and how to load it.

    RUN_DIR/config.yaml        the resolved TrainConfig, the data's shape and normalization,
                               the toughen version and git revision
    RUN_DIR/metrics.jsonl      one JSON object per epoch
    RUN_DIR/model.safetensors  the weights (loads without executing code)
    RUN_DIR/summary.json       the headline numbers
    RUN_DIR/evaluations.jsonl  one JSON object per `toughen eval` (the report reads these)
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from toughen.errors import ToughenUsageError
from toughen.models import build_model
from toughen.models.backbone import check_trusted

RUN_FILES = ("config.yaml", "metrics.jsonl", "model.safetensors", "summary.json", "evaluations.jsonl",
             "model_last.safetensors", "checkpoint.pt", "model_raw.safetensors", "audit.json", "report.html",
             "eval_state.json")
LOCK_FILE = ".lock"  # held (flock) by the one process that writes the run; see RunLock


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
    """Append one line, whole or not at all.

    The line goes out in one write() on a file opened for appending, so concurrent appends do not
    interleave. A line torn by an earlier crash or a full disk (no final newline) is cut off first:
    it was never a complete record, and the new line must not be glued onto it."""
    line = (json.dumps(obj) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
            cut = tail.rfind(b"\n")
            os.ftruncate(fd, size - len(tail) + cut + 1 if cut >= 0 else 0)
        written = os.write(fd, line)
        if written != len(line):  # a short write (disk full): take the fragment back
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(f"could not append to {path}: the disk is full or the file too large")
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a jsonl file, one per line. A line that is not a JSON object (torn by a
    crash, edited by hand) is skipped with a warning, and the lines after it are still read."""
    rows = []
    for i, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            warnings.warn(f"{path}, line {i}: not a JSON object; skipped", stacklevel=2)
    return rows


def record_evaluation(run_dir: str | Path, result: dict) -> None:
    """Append an evaluation's result (JSON-serializable values only) to RUN_DIR/evaluations.jsonl."""
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


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an ``--out`` that cannot become this run's directory, before anything is written:
    empty, a file, not writable, or holding files without ``overwrite``."""
    if str(out).strip() == "":
        raise ToughenUsageError("--out is empty; give the directory the run should be written to")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ToughenUsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not overwrite:
        raise ToughenUsageError(f"--out {out} exists and is not empty; pass --overwrite or choose another directory")
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ToughenUsageError(f"cannot write to {existing}; choose an --out in a writable directory")
    return out


def open_run_dir(out: str | Path, overwrite: bool, resume: bool = False) -> "RunLock":
    """Take ``out`` for writing a run, and return its :class:`RunLock` (release it when done).

    A new run: ``out`` is checked (:func:`check_out_dir`) before the lock file is made, so a
    refused directory is left as it was; then, under the lock, ``overwrite`` removes toughen's
    own files, every one an earlier run left (anything else the user put there stays). A resumed
    run keeps its files but loses the temporary ones a killed process left."""
    if not resume:
        check_out_dir(out, overwrite)
    lock = RunLock(out)
    try:
        if not resume:
            check_out_dir(out, overwrite)  # again, under the lock: another writer may have finished meanwhile
            for name in RUN_FILES:
                (lock.run_dir / name).unlink(missing_ok=True)
        remove_temporary_files(lock.run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def remove_temporary_files(run_dir: Path) -> None:
    """The ``.NAME.*.tmp`` files of atomic writes that a killed process left behind."""
    for p in Path(run_dir).glob(".*.tmp"):
        p.unlink(missing_ok=True)


class RunLock:
    """Exclusive ownership of a run directory by one process, for as long as it writes there.

    An advisory lock (flock) on RUN_DIR/.lock, which holds the owner's pid. The kernel drops it
    when the process ends, however it ends, so a killed run never leaves the directory locked.
    A second writer is refused at once, with the owner's pid, even with --overwrite."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = run_dir = Path(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.path = run_dir / LOCK_FILE
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ToughenUsageError(f"cannot write to {run_dir} ({e.strerror}); choose another --out") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise ToughenUsageError(f"{run_dir} is being written by another toughen process (pid {owner}); wait "
                                    "for it to finish or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays, empty of meaning
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


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
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    weights = run_weights(run_dir)
    data = cfg["data_info"]
    train = cfg["train"]
    check_trusted(train["model"])  # a factory model is Python code the run only names
    model = build_model(
        train["model"], data["input_shape"], data["num_classes"],
        mean=data["mean"] if train["normalize"] else None, std=data["std"] if train["normalize"] else None,
        **train["model_options"],
    )
    load_weights(model, weights)
    return model.to(device).eval()
