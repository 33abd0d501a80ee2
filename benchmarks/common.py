"""Shared plumbing for the benchmark scripts: timing contenders round-robin, the machine and
versions a number was measured on, and writing results (JSON, and one Markdown section of
docs/benchmarks.md per script).

Why round-robin: on a shared CPU the speed of the machine drifts (other processes, frequency
scaling, caches). Running contender A five times and then B five times puts the drift into the
A/B ratio; running A, B, C, A, B, C, ... (and rotating who goes first each round) spreads it
evenly, and the median of each contender's repetitions drops the outliers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


# ---------------------------------------------------------------- timing


@dataclass
class Timed:
    """The wall times of one contender's timed repetitions and what each returned."""

    name: str
    seconds: list[float] = field(default_factory=list)
    # CPU time of this process: on a loaded machine, with one torch thread, a measure of the work
    # done that does not count the time other processes held the cores.
    cpu_seconds: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repetitions: how noisy this contender's timing was."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.seconds else float("nan")


def round_robin(
    contenders: dict[str, Callable[[int], Any]],
    reps: int,
    warmup: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, Timed]:
    """Time each contender ``reps`` times, one repetition of each per round, rotating the order.

    ``contenders[name](rep)`` runs repetition ``rep`` (every contender gets the same ``rep``, so
    the same inputs, within a round). ``warmup[name]()``, if given, runs once per contender
    before any timing: first calls pay for kernel selection and allocation.
    """
    names = list(contenders)
    for name in names:
        if warmup is not None and name in warmup:
            warmup[name]()
    timed = {name: Timed(name) for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            t0, c0 = time.perf_counter(), time.process_time()
            out = contenders[name](rep)
            timed[name].seconds.append(time.perf_counter() - t0)
            timed[name].cpu_seconds.append(time.process_time() - c0)
            timed[name].results.append(out)
    return timed


# ---------------------------------------------------------------- machine and versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "?")


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip() or None
    # A result measured on uncommitted code says so (the scripts' own output files aside).
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":!docs/benchmarks.md"], cwd=ROOT,
                           capture_output=True, timeout=10).returncode == 1
    return f"{rev} with uncommitted changes" if rev and dirty else rev


def machine_info() -> dict[str, Any]:
    """Where and with what a result was measured; stored with every result."""
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        # what oneDNN may use: AMX makes bf16 3-4x faster than fp32; without it bf16 can be slower
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "load_average_1min": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "toughen": _version("toughen"),
        "torchattacks": _version("torchattacks"),
        "art": _version("art"),
        "git_revision": git_revision(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def _yes(value: Any) -> str:
    return "unknown" if value is None else "yes" if value else "no"


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown paragraph with the machine, versions, date and command."""
    peers = ", ".join(f"{k} {info[k]}" for k in ("torchattacks", "art") if info.get(k))
    load = info.get("load_average_1min")
    load_text = f"; 1-min load average {load:.1f} at the start" if load is not None else ""
    end_load = info.get("load_average_1min_end")
    if end_load is not None:
        load_text += f", {end_load:.1f} at the end"
    return (
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads, "
        f"bf16 instructions: {'yes' if info['cpu_bf16'] else 'no'}, AMX: {_yes(info.get('amx'))}, "
        f"ONEDNN_MAX_CPU_ISA: {info.get('isa_cap') or 'not set'}"
        f"{'' if info.get('onednn_bf16', True) else ' (bf16 emulated)'}{load_text}); Python {info['python']}, "
        f"torch {info['torch']}, toughen {info['toughen']} (git {info['git_revision']}){', ' + peers if peers else ''}."
        f"\nCommand: `{info['command']}`"
    )


# ---------------------------------------------------------------- against a reference checkout
# fab_reference.py, eot_reference.py and standard_reference.py run toughen beside fra31/auto-attack
# imported from a directory the user gives (never shipped), on the first N test examples of a run.


def reference_parser(description: str, *, run: str, n: int) -> argparse.ArgumentParser:
    """The arguments every reference comparison takes: --autoattack-dir, --run, --n, --eps, --out."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--autoattack-dir", required=True, help="directory holding the autoattack package")
    p.add_argument("--run", default=run, help="a toughen run directory (its model and dataset)")
    p.add_argument("--n", type=int, default=n, help="the first N test examples")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p


def reference_setup(args: argparse.Namespace, threads: int = 1):
    """The same torch thread count for every contender, the reference importable from
    --autoattack-dir, and (model in eval mode, x, y): the run's model and its first --n test examples."""
    import torch  # the benchmark scripts' shared plumbing stays importable without torch

    from toughen.data import load_data
    from toughen.runs import load, read_config

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(args.autoattack_dir).resolve()))
    model = load(args.run).eval()
    splits = load_data(read_config(Path(args.run))["train"]["data"])
    return model, splits.x_test[: args.n], splits.y_test[: args.n]


def print_result(result: dict[str, Any], out: str | None) -> None:
    """Print the comparison as one JSON object, and write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


# ---------------------------------------------------------------- output


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    tmp.replace(path)
    return path


def md_table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> str:
    """A Markdown table; columns whose index is in ``right`` are right-aligned (numbers)."""
    right = right if right is not None else set(range(1, len(headers)))
    sep = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_DOC_HEAD = """# Benchmarks

toughen against the tools a user would pick instead (torchattacks, IBM's Adversarial Robustness
Toolbox), on the same machine, in the same run. Each section below is written by one script in
`benchmarks/` and says when, where and with which command it was measured; `make bench` runs them
all and also writes the raw numbers to `benchmarks/results/*.json`.
"""


def write_section(key: str, markdown: str, doc: Path = DOC) -> None:
    """Replace the part of docs/benchmarks.md between ``<!-- bench:KEY -->`` and
    ``<!-- /bench:KEY -->`` (append it when absent); every other part stays as it was.

    Several scripts write the file, possibly at once: an exclusive lock around the
    read-modify-write keeps one from dropping another's section.
    """
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    doc.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "toughen-benchmarks-md.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = doc.read_text() if doc.exists() else _DOC_HEAD
        if start in text and end in text:
            before, rest = text.split(start, 1)
            after = rest.split(end, 1)[1]
            text = before + block + after
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        tmp = doc.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(doc)


def publish(key: str, result: dict[str, Any], markdown: str, *, doc: bool = True) -> None:
    """The end of every script: the JSON under benchmarks/results/, the table on stdout, and
    (unless ``doc`` is False) the script's section of docs/benchmarks.md."""
    path = write_json(key, result)
    print(f"\n{markdown}\n\nwrote {path}", flush=True)
    if doc:
        write_section(key, markdown)


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def fmt_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"
