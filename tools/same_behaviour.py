"""Prove that a refactoring left toughen's behaviour unchanged: run the same commands with the code
of an earlier commit ("before") and with the working tree ("after"), and compare what they wrote.

Usage::

    .venv/bin/python tools/same_behaviour.py --before COMMIT [--demo] [--keep DIR] [--only PATTERN]
    .venv/bin/python tools/same_behaviour.py --self-test     # the comparison itself, no training

How. COMMIT is exported with ``git archive`` into a temporary directory (nothing in the repository,
its index or its worktree list changes). Every scenario then runs twice, each time in a fresh
output directory: once as ``python -m toughen ...`` with PYTHONPATH pointing at that export, once
with PYTHONPATH pointing at the repository root (``--after DIR`` points it at another source tree
instead). The script first checks that ``import toughen`` really resolves into each tree, and
stops if it does not (an editable install could otherwise win and both sides would run the same
code). Commands run with a scratch directory as their working directory, because ``python -m``
puts the working directory first on sys.path, ahead of PYTHONPATH.

Scenarios (names for --only in brackets). All image runs are pinned to fp32 and the contiguous
memory layout (``--amp fp32 --no-channels-last``) with ``--seed 0``: otherwise a timed probe picks
the precision, and two honest runs could pick differently.

* ``train:RECIPE``: ``toughen train --data digits --recipe RECIPE --epochs 2``, for every recipe in
  the before code's ``RECIPES`` registry. A recipe that fails before (a text recipe, one needing a
  flag) is reported as skipped with its error, not compared.
* ``text:text_augment``: ``toughen train --data prompt_injection --recipe text_augment --epochs 2``
  with a config file that attacks 50 validation and 100 test texts (the defaults take minutes).
  Text training refuses --amp; it has no precision probe.
* ``sweep:mix,trades``: ``toughen sweep --grid recipe=mix,trades --data digits --epochs 1
  --no-report``; sweep has no --amp flag, so the pinning comes in a --config file
  (``amp: null``, which is fp32, and ``channels_last: false``).
* ``eval:pgd-standard``: ``toughen eval RUN --suite standard --n 50 --amp fp32`` on a copy of the
  *before* side's ``train:pgd`` run, for both sides: the evaluation is compared on the same
  weights, apart from any training difference. The eval command has no layout flag and times
  both layouts, so the launcher sets the default of ``evaluate(fast_layout=...)`` to False
  (contiguous) before running the CLI; if that parameter does not exist the run is left unpinned
  and the table says so.
* ``demo`` (only with --demo, about 5 minutes a side): ``toughen demo``. It chooses its training
  precision by timing, so a difference there can come from the probe rather than the code.

What is compared, old against new, for each scenario: the set of files written; every row of
metrics.jsonl and evaluations.jsonl; summary.json, sweep.json and any other JSON; config.yaml
(parsed); the JSON the command printed on stdout; every ``*.safetensors`` file tensor by tensor;
and checkpoint.pt (optimizer state, RNG states, history), loaded with ``weights_only=True``.
Values must be equal exactly: floats bit for bit (``float.hex``), tensors byte for byte with the
same dtype and shape, 1 and 1.0 are different. Not compared: the ``.lock`` file (a process id),
the commands' stderr (progress and warnings), and the demo's printed table (it has timings).

Ignored keys (anywhere in a JSON/YAML/checkpoint structure), chosen from real run directories:
keys containing ``seconds`` (train_seconds, val_seconds, step_seconds, guard_seconds,
wall_seconds_this_process, per-attack and per-epoch ``seconds``), ``timings`` (the precision
probe's ``timings_ms``), ``elapsed``, ``duration`` or ``per_second`` (none are written today; they
could only ever be timings); and the keys ``time`` (the date stamp of an evaluations.jsonl row),
``git_revision``, ``toughen_version`` and ``torch_version`` (what ran, not what it did). Keys are
matched narrowly on purpose: a broad word such as "out" or "path" would also hide ``dropout`` or
``data_path``. The output lists the ignored keys that were actually met.

``--new-key KEY`` (repeatable) lets the after side have a key the before side lacks, anywhere: the
fields of a feature added since (a new TrainConfig option at its default, say ``ema``). Such a
key is listed at the end, not compared; a key both sides have is still compared.

Exit status: 0 when every scenario that ran is the same, 1 when one differs (or fails after but
not before), 2 for a usage or setup error.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SIDES = ("before", "after")

# --------------------------------------------------------------------------- what is ignored

IGNORED_KEY_PARTS = ("seconds", "timings", "elapsed", "duration", "per_second")
IGNORED_KEYS = frozenset({"time", "git_revision", "toughen_version", "torch_version"})
# Files never compared: a process id, and what the command said while it worked.
UNCOMPARED_FILES = frozenset({".lock", "stderr.txt", "stdout.log"})


def is_ignored_key(key: Any) -> bool:
    text = str(key)
    return text in IGNORED_KEYS or any(part in text for part in IGNORED_KEY_PARTS)


# --------------------------------------------------------------------------- comparison


class Difference(Exception):
    """The first place where before and after disagree; the message says where and how."""


@dataclass
class Comparer:
    ignored_seen: set[str] = field(default_factory=set)  # for the report: which keys were dropped
    # keys the after side may have that the before side lacks (--new-key): the fields of a feature
    # added since, such as a new TrainConfig option at its default; they are reported, not compared
    new_keys: frozenset[str] = frozenset()
    new_seen: set[str] = field(default_factory=set)

    def values(self, a: Any, b: Any, where: str) -> None:
        """Raise Difference unless ``a`` and ``b`` are exactly equal, ignoring timing keys."""
        import torch

        if type(a) is not type(b):  # 1 vs 1.0, or a tensor vs a list, is a visible change
            raise Difference(f"{where or '(top)'}: {short(a)} ({type(a).__name__}) != {short(b)} ({type(b).__name__})")
        if isinstance(a, dict):
            keys_a = {k for k in a if not self._ignored(k)}
            keys_b = {k for k in b if not self._ignored(k)}
            added = {k for k in keys_b - keys_a if str(k) in self.new_keys}
            self.new_seen.update(map(str, added))
            keys_b -= added
            if keys_a != keys_b:
                only_a, only_b = sorted(map(str, keys_a - keys_b)), sorted(map(str, keys_b - keys_a))
                raise Difference(f"{where or '(top)'}: keys only before {only_a}, only after {only_b}")
            for k in a:  # the before side's order, so the first difference is the first in the file
                if k in keys_a:
                    self.values(a[k], b[k], f"{where}.{k}" if where else str(k))
        elif isinstance(a, (list, tuple)):
            if len(a) != len(b):
                raise Difference(f"{where or '(top)'}: {len(a)} items before, {len(b)} after")
            for i, (x, y) in enumerate(zip(a, b)):
                self.values(x, y, f"{where}[{i}]")
        elif isinstance(a, float):
            if a.hex() != b.hex():  # bit-equal: tells -0.0 from 0.0, and nan equals nan
                raise Difference(f"{where}: {a!r} != {b!r}")
        elif isinstance(a, torch.Tensor):
            self.tensors(a, b, where)
        elif a != b:
            raise Difference(f"{where}: {short(a)} != {short(b)}")

    def tensors(self, a, b, where: str) -> None:
        if a.dtype != b.dtype or a.shape != b.shape:
            raise Difference(f"{where}: {a.dtype} {tuple(a.shape)} != {b.dtype} {tuple(b.shape)}")
        # Compare the bytes, not the values: NaNs in the same places count as equal, -0.0 != 0.0.
        bytes_a = a.detach().cpu().contiguous().reshape(-1).view(torch_uint8())
        bytes_b = b.detach().cpu().contiguous().reshape(-1).view(torch_uint8())
        if not bytes_a.equal(bytes_b):
            diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else "n/a"
            raise Difference(f"{where}: tensor values differ (max abs difference {diff})")

    def _ignored(self, key: Any) -> bool:
        if is_ignored_key(key):
            self.ignored_seen.add(str(key))
            return True
        return False


def torch_uint8():
    import torch

    return torch.uint8


def short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def load_for_comparison(path: Path) -> Any:
    """A file's content in comparable form, by kind; raw bytes for a kind not known here."""
    name = path.name
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    if name.endswith(".pt"):
        import torch

        # weights_only: a checkpoint is data; it must load without running pickled code
        return torch.load(path, map_location="cpu", weights_only=True)
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if name.endswith(".json") or name == "stdout.txt":
        text = path.read_text()
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text  # not JSON after all: compared as text
    if name.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(path.read_text())
    return path.read_bytes()


def compared_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and p.name not in UNCOMPARED_FILES}


def compare_dirs(before: Path, after: Path, comparer: Comparer) -> None:
    """Compare every file the two sides wrote; raise Difference at the first difference."""
    files_a, files_b = compared_files(before), compared_files(after)
    if files_a != files_b:
        raise Difference(f"files only before {sorted(files_a - files_b)}, only after {sorted(files_b - files_a)}")
    # Readable files first, so that a difference shows as a metrics row rather than a weight.
    for rel in sorted(files_a, key=lambda rel: (rel.endswith((".pt", ".safetensors")), rel)):
        comparer.values(load_for_comparison(before / rel), load_for_comparison(after / rel), rel)


# --------------------------------------------------------------------------- running toughen


class RunFailed(Exception):
    """A toughen command exited non-zero; the message is its last line of stderr."""


# For eval: pin the memory layout the way --no-channels-last does for train, then run the CLI.
EVAL_LAUNCHER = """
import runpy, sys
try:
    import toughen.evaluation.suite as suite
    defaults = suite.evaluate.__kwdefaults__ or {}
except (ImportError, AttributeError):  # moved by a refactoring: run unpinned, and say so
    defaults = {}
if "fast_layout" in defaults:
    defaults["fast_layout"] = False
else:
    print("same_behaviour: no evaluate(fast_layout=...); layout left to the probe", file=sys.stderr)
runpy.run_module("toughen", run_name="__main__", alter_sys=True)
"""


@dataclass
class Toughen:
    """Runs toughen commands with one of two source trees, each in its own directory."""

    trees: dict[str, Path]
    scratch: Path  # working directory of every command; never a source tree
    timeout: float

    def env(self, side: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.trees[side])}

    def python(self, side: str, args: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], env=self.env(side), cwd=cwd or self.scratch,
                              capture_output=True, text=True, timeout=self.timeout, check=False)

    def check_imports(self) -> None:
        """Stop unless each side's ``import toughen`` resolves into its own tree."""
        for side, tree in self.trees.items():
            proc = self.python(side, ["-c", "import toughen; print(toughen.__file__)"])
            found = Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None
            if found is None or not found.is_relative_to(tree.resolve()):
                fail(f"with PYTHONPATH={tree}, 'import toughen' gives "
                         f"{found or proc.stderr.strip()!s}, not a module inside {tree}; the {side} side "
                         "would not run its own code")
            progress(f"{side}: toughen from {found}")

    def run(self, side: str, args: list[str], into: Path, *, launcher: str | None = None) -> Any:
        """``toughen ARGS`` (or the launcher with ARGS); stdout to INTO/stdout.txt, stderr to
        INTO/stderr.txt. Raises RunFailed with the error line."""
        into.mkdir(parents=True, exist_ok=True)
        prefix = ["-c", launcher] if launcher else ["-m", "toughen"]
        try:
            proc = self.python(side, [*prefix, *args])
        except subprocess.TimeoutExpired:
            raise RunFailed(f"timed out after {self.timeout:.0f} s: toughen {' '.join(args)}") from None
        (into / "stdout.txt").write_text(proc.stdout)
        (into / "stderr.txt").write_text(proc.stderr)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()] or [f"exit {proc.returncode}"]
            raise RunFailed(f"exit {proc.returncode}: {lines[-1].strip()}")
        return proc

    def query(self, side: str, code: str) -> str | None:
        """What CODE prints with one side's toughen; None if it fails."""
        proc = self.python(side, ["-c", code])
        return proc.stdout.strip() if proc.returncode == 0 else None


def fail(message: str) -> None:
    """A usage or setup error: exit 2, apart from 1 (a scenario differs)."""
    print(f"same_behaviour: {message}", file=sys.stderr)
    sys.exit(2)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- scenarios

PIN = ["--amp", "fp32", "--no-channels-last", "--seed", "0"]


@dataclass
class Scenario:
    name: str
    # Runs one side into the directory given (its files are what gets compared).
    run: Callable[[str, Path], None]
    note: str = ""


@dataclass
class Result:
    name: str
    files: int
    verdict: str  # "same", "DIFFERENT: ...", "skipped: ..."
    seconds: float = 0.0

    @property
    def differs(self) -> bool:
        return self.verdict.startswith("DIFFERENT")


class Scenarios:
    """Builds the scenario list; holds what scenarios share (the before side's pgd run)."""

    def __init__(self, tool: Toughen, root: Path, recipes: list[str], demo: bool):
        self.tool, self.root, self.recipes, self.demo = tool, root, recipes, demo
        self._locks_lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._outcome: dict[tuple[str, str], RunFailed | None] = {}
        self.pin_config = root / "pin-fp32.yaml"
        self.pin_config.write_text("amp: null  # fp32\nchannels_last: false\n")
        self.text_config = root / "text-small.yaml"
        self.text_config.write_text("val_n: 50  # validation texts attacked each epoch\neval_n: 100  # test texts\n")

    def all(self) -> list[Scenario]:
        scenarios = [Scenario(f"train:{r}", self._train(r)) for r in self.recipes]
        scenarios += [
            Scenario("text:text_augment", self._text),
            Scenario("sweep:mix,trades", self._sweep),
            Scenario("eval:pgd-standard", self._eval),
        ]
        if self.demo:
            scenarios.append(Scenario("demo", self._demo, note="automatic precision: a difference may be the probe's"))
        return scenarios

    def dir(self, scenario: str, side: str) -> Path:
        return self.root / scenario.replace(":", "-").replace(",", "+") / side

    def _train(self, recipe: str) -> Callable[[str, Path], None]:
        def run(side: str, into: Path) -> None:
            self._train_run(recipe, side, self.dir(f"train:{recipe}", side))

        return run

    def _train_run(self, recipe: str, side: str, into: Path) -> None:
        # Once per (recipe, side): train:pgd and eval:pgd-standard share the before side's pgd
        # run, whichever comes first trains it and the other waits for it (with --jobs > 1).
        with self._locks_lock:
            lock = self._locks.setdefault((recipe, side), threading.Lock())
        with lock:
            if (recipe, side) not in self._outcome:
                try:
                    self.tool.run(side, ["train", "--data", "digits", "--recipe", recipe, "--epochs", "2", *PIN,
                                         "--out", str(into / "out"), "--json"], into)
                    self._outcome[(recipe, side)] = None
                except RunFailed as e:
                    self._outcome[(recipe, side)] = e
        if self._outcome[(recipe, side)] is not None:
            raise self._outcome[(recipe, side)]

    def trained(self, recipe: str, side: str) -> Path:
        """The run directory of ``train:RECIPE`` on one side, training it if no scenario has."""
        self._train_run(recipe, side, self.dir(f"train:{recipe}", side))
        return self.dir(f"train:{recipe}", side) / "out"

    def _text(self, side: str, into: Path) -> None:
        self.tool.run(side, ["train", "--data", "prompt_injection", "--recipe", "text_augment", "--epochs", "2",
                             "--seed", "0", "--config", str(self.text_config), "--out", str(into / "out"),
                             "--json"], into)

    def _sweep(self, side: str, into: Path) -> None:
        self.tool.run(side, ["sweep", "--grid", "recipe=mix,trades", "--config", str(self.pin_config),
                             "--data", "digits", "--epochs", "1", "--seed", "0", "--out", str(into / "out"),
                             "--json", "--no-report"], into)

    def _eval(self, side: str, into: Path) -> None:
        # Both sides evaluate copies of the *before* side's run: same weights, so only the
        # evaluation code can make them differ.
        source = self.trained("pgd", "before")
        shutil.copytree(source, into / "run", ignore=shutil.ignore_patterns(".lock"))
        self.tool.run(side, ["eval", str(into / "run"), "--suite", "standard", "--n", "50", "--amp", "fp32",
                             "--seed", "0", "--json"], into, launcher=EVAL_LAUNCHER)

    def _demo(self, side: str, into: Path) -> None:
        self.tool.run(side, ["demo", "--out", str(into / "out")], into)
        # its stdout is a table with timings in it: kept, not compared
        (into / "stdout.txt").rename(into / "stdout.log")


def run_scenario(scenario: Scenario, scenarios: Scenarios, new_keys: frozenset[str]) -> tuple[Result, Comparer]:
    start = time.perf_counter()
    comparer = Comparer(new_keys=new_keys)
    dirs = {side: scenarios.dir(scenario.name, side) for side in SIDES}
    for side in SIDES:
        progress(f"{scenario.name}: running {side}")
        try:
            scenario.run(side, dirs[side])
        except RunFailed as e:
            verdict = f"skipped: fails before: {e}" if side == "before" else f"DIFFERENT: fails after (not before): {e}"
            progress(f"{scenario.name}: {verdict}")
            return Result(scenario.name, 0, verdict, time.perf_counter() - start), comparer
    files = len(compared_files(dirs["before"]))
    try:
        compare_dirs(dirs["before"], dirs["after"], comparer)
        verdict = "same"
    except Difference as e:
        verdict = f"DIFFERENT: {e}"
    for side in SIDES:
        stderr = dirs[side] / "stderr.txt"
        if stderr.exists() and "layout left to the probe" in stderr.read_text():
            verdict += f" (memory layout not pinned {side})"
    if scenario.note:
        verdict += f" [{scenario.note}]"
    result = Result(scenario.name, files, verdict, time.perf_counter() - start)
    progress(f"{scenario.name}: {result.verdict} ({result.seconds:.0f} s)")
    return result, comparer


# --------------------------------------------------------------------------- the command


def export_commit(commit: str, into: Path) -> None:
    """COMMIT's files in INTO, through git archive: the repository itself is not touched."""
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        fail(f"git archive {commit} failed")


def resolve_commit(commit: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        fail(f"{commit!r} is not a commit of {REPO}")
    return proc.stdout.strip()


def selected(name: str, patterns: list[str]) -> bool:
    """--only: glob patterns (train:*), or plain substrings (pgd), any of them."""
    return not patterns or any(fnmatch.fnmatchcase(name, p) or p in name for p in patterns)


def print_table(results: list[Result], ignored: set[str]) -> None:
    width = max([len("scenario")] + [len(r.name) for r in results])
    print(f"{'scenario':<{width}}  {'files':>5}  {'time':>6}  result")
    for r in results:
        print(f"{r.name:<{width}}  {r.files!s:>5}  {r.seconds:>5.0f}s  {r.verdict}")
    print()
    print(f"ignored keys met: {', '.join(sorted(ignored)) or 'none'}")
    print(f"ignored key rule: containing {', '.join(IGNORED_KEY_PARTS)}; or exactly {', '.join(sorted(IGNORED_KEYS))}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="the commit whose behaviour is the reference")
    parser.add_argument("--after", type=Path, default=REPO,
                        help="source tree of the new side (default: this repository's working tree)")
    parser.add_argument("--demo", action="store_true", help="also run `toughen demo` (about 5 minutes a side)")
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them (default: a temporary directory)")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only the scenarios matching PATTERN: a glob (train:*) or a substring; repeatable")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios at once (default 1)")
    parser.add_argument("--new-key", action="append", default=[], metavar="KEY",
                        help="a key the after side may add (a new feature's config field); repeatable")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one toughen command may take")
    parser.add_argument("--self-test", action="store_true", help="check the comparison on made-up data and exit")
    args = parser.parse_args(argv)
    if not args.self_test and not args.before:
        parser.error("--before COMMIT is required")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        return self_test()
    commit = resolve_commit(args.before)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="same_behaviour-") as tmp:
        old_tree = Path(tmp) / "before-src"
        old_tree.mkdir()
        export_commit(commit, old_tree)
        progress(f"before: {commit[:12]} exported to {old_tree}; after: {args.after}")
        root = args.keep.resolve() if args.keep else Path(tmp) / "runs"
        if root.exists() and any(root.iterdir()):
            fail(f"--keep {root} is not empty")
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tmp) / "cwd"
        scratch.mkdir()
        tool = Toughen({"before": old_tree, "after": args.after.resolve()}, scratch, args.timeout)
        tool.check_imports()
        list_recipes = "from toughen.train.recipes import RECIPES; print(' '.join(RECIPES.names()))"
        recipes = tool.query("before", list_recipes)
        if recipes is None:
            fail(f"the before code cannot list its recipes ({list_recipes!r})")
        recipes = recipes.split()
        after_recipes = tool.query("after", list_recipes)  # only for a note: a new recipe has no reference
        new_recipes = set(after_recipes.split()) - set(recipes) if after_recipes else set()
        if new_recipes:
            progress(f"recipes only after (nothing to compare them with): {', '.join(sorted(new_recipes))}")
        scenarios = Scenarios(tool, root, recipes, args.demo)
        todo = [s for s in scenarios.all() if selected(s.name, args.only)]
        if not todo:
            fail(f"no scenario matches {args.only}")
        if args.demo:
            progress("demo: toughen demo chooses its training precision by timing (auto); it is not pinned")
        progress(f"{len(todo)} scenarios: {', '.join(s.name for s in todo)}")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            outcomes = list(pool.map(lambda s: run_scenario(s, scenarios, frozenset(args.new_key)), todo))
    results = [r for r, _ in outcomes]
    ignored = set().union(*(c.ignored_seen for _, c in outcomes))
    print_table(results, ignored)
    if args.new_key:
        new = set().union(*(c.new_seen for _, c in outcomes))
        print(f"keys only after, allowed by --new-key: {', '.join(sorted(new)) or 'none met'}")
    print(f"wall time {time.perf_counter() - started:.0f} s; before {commit[:12]}, after {args.after}"
          + (f"; runs kept in {args.keep}" if args.keep else ""))
    return 1 if any(r.differs for r in results) else 0


# --------------------------------------------------------------------------- self-test


def self_test() -> int:
    """The comparison must notice what matters and only that. No toughen code runs."""
    import torch

    def verdict(a: Any, b: Any) -> str:
        try:
            Comparer(new_keys=frozenset({"ema"})).values(a, b, "")
            return "same"
        except Difference as e:
            return str(e)

    row = {"epoch": 1, "loss": 0.5, "seconds": 1.0, "precision": {"label": "fp32", "timings_ms": {"fp32": 3.0}}}
    cases = [
        ("timings ignored", row, {**row, "seconds": 9.0, "precision": {"label": "fp32", "timings_ms": {}}}, True),
        ("float off by one ulp", row, {**row, "loss": math.nextafter(0.5, 1)}, False),
        ("int vs float", {"n": 1}, {"n": 1.0}, False),
        ("-0.0 vs 0.0", {"x": -0.0}, {"x": 0.0}, False),
        ("nan equals nan", {"x": float("nan")}, {"x": float("nan")}, True),
        ("missing key", row, {k: v for k, v in row.items() if k != "epoch"}, False),
        ("nested label", row, {**row, "precision": {"label": "bf16", "timings_ms": {}}}, False),
        ("list length", [1, 2], [1, 2, 3], False),
        ("tensor equal", {"w": torch.arange(6.0)}, {"w": torch.arange(6.0)}, True),
        ("tensor one bit", {"w": torch.ones(3)}, {"w": torch.ones(3).nextafter(torch.tensor(2.0))}, False),
        ("tensor dtype", {"w": torch.ones(3)}, {"w": torch.ones(3, dtype=torch.float64)}, False),
        ("tensor nan", {"w": torch.tensor([float("nan")])}, {"w": torch.tensor([float("nan")])}, True),
        ("0-d tensor", {"w": torch.tensor(2)}, {"w": torch.tensor(3)}, False),
        ("key 'dropout' not ignored", {"dropout": 0.1}, {"dropout": 0.2}, False),
        ("new key allowed", {"lr": 0.1}, {"lr": 0.1, "ema": None}, True),
        ("new key still compared when both have it", {"ema": 0.9}, {"ema": 0.99}, False),
        ("new key only before", {"lr": 0.1, "ema": None}, {"lr": 0.1}, False),
    ]
    failed = 0
    for name, a, b, same in cases:
        got = verdict(a, b)
        ok = (got == "same") == same
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {got}")
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "a"), Path(tmp, "b")
        a.mkdir(), b.mkdir()
        for d, loss in ((a, 0.5), (b, 0.25)):
            (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "seconds": 1.0}) + "\n"
                                             + json.dumps({"epoch": 2, "loss": loss}) + "\n")
            (d / ".lock").write_text(str(os.getpid() + (d == b)))
        try:
            compare_dirs(a, b, Comparer())
            got = "same"
        except Difference as e:
            got = str(e)
        ok = got.startswith("metrics.jsonl[1].loss")
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} directories, second row differs: {got}")
    print("self-test passed" if not failed else f"self-test: {failed} FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
