"""Run every benchmark against the peers, one after the other, in one go (`make bench`).

    .venv/bin/python benchmarks/run_all.py [--run RUN_DIR] [--quick]

The attack-strength and evaluation benchmarks need a PGD-trained mnist5k model: ``--run``, else
``runs/demo/pgd`` (what ``make demo`` trains), else a short one trained here once into
``runs/bench/pgd`` (4 epochs, about 40 seconds on one core) and reused afterwards.

Each script writes its own section of docs/benchmarks.md and its JSON under benchmarks/results/.
On a machine with two or more cores the scripts run in two lanes at once, each pinned to one core
with one torch thread (the benchmark model if one is needed, attacks and ART training on core 0;
single-step training, then the suite comparison, on core 1): every ratio is between contenders of
one script, which share a core, and the whole run takes about half the time. ``--serial`` runs
them one after the other on all cores. They are sized down (50 evaluation examples, only pgd and
atta_free in the 10-epoch training comparison, CIFAR-shaped batch of 2; ``--full`` keeps their own
defaults) so that the whole run finishes in under 15 minutes on an idle 2-core CPU; this prints
each script's time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


BENCH_MODEL = Path("runs") / "bench" / "pgd"
# The 4-epoch PGD model trained when none is given: the demo's recipe, shorter.
TRAIN_BENCH_MODEL = ["-m", "toughen", "train", "--recipe", "pgd", "--epochs", "4", "--eps", "0.3", "--steps", "10",
                     "--eps-warmup", "0.3333", "--eval-steps", "0", "--out", str(BENCH_MODEL), "--overwrite", "--json"]


def pick_model(run: str | None) -> tuple[str, bool]:
    """The model to attack and whether it still has to be trained. Paths are relative to the
    repository (the scripts run there), so the docs name runs/demo/pgd, not a clone's path."""
    if run:
        return run, False
    for candidate in (Path("runs") / "demo" / "pgd", BENCH_MODEL):
        if (ROOT / candidate / "model.safetensors").is_file():
            return str(candidate), False
    return str(BENCH_MODEL), True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="run directory of a PGD-trained mnist5k model")
    ap.add_argument("--quick", action="store_true", help="smoke-run each script (no docs written)")
    ap.add_argument("--only", default=None, help="comma-separated subset: attacks,art-training,eval,training")
    ap.add_argument("--threads", default=None, help="torch threads for the scripts that take --threads")
    ap.add_argument("--serial", action="store_true",
                    help="one script at a time on all cores (default: two lanes, one core each, when there are two)")
    ap.add_argument("--full", action="store_true",
                    help="other issues' scripts at their own (longer) defaults instead of the 15-minute sizes")
    args = ap.parse_args()

    t_all = time.perf_counter()
    run, to_train = pick_model(args.run)
    py = sys.executable
    quick = ["--quick"] if args.quick else []
    cores = os.cpu_count() or 1
    lanes = 2 if cores >= 2 and not args.serial and shutil.which("taskset") else 1
    # In two lanes each script gets one core and one torch thread, so the contenders inside a
    # script share one core's conditions; serially they get --threads (default: all cores).
    threads = ["--threads", "1"] if lanes == 2 else (["--threads", args.threads] if args.threads else [])
    attacks = [py, "benchmarks/bench_attacks.py", "--run", run, *quick, *threads]
    if not args.full and not args.quick:
        attacks += ["--cifar-n", "2"]
    art_training = [py, "benchmarks/bench_art_training.py", *quick, *threads]
    plan_a = [("attacks", attacks), ("art-training", art_training)]
    if to_train:  # first in its lane; the other lane starts with training, which needs no model
        print(f"no PGD-trained model given: training one into {run} (4 epochs)", flush=True)
        plan_a.insert(0, ("model", [py, *TRAIN_BENCH_MODEL]))
    plan_b = []
    if (HERE / "bench_training.py").is_file():  # issue 4: single-step vs PGD training
        # pgd and atta_free (the best single-step recipe) at the full 10 epochs (it needs epochs to
        # accumulate its steps); the other single-step recipes only with --full.
        if args.full:
            size = []
        elif args.quick:
            size = ["--epochs", "1", "--no-doc", "--recipes", "pgd,atta_free"]
        else:
            size = ["--recipes", "pgd,atta_free"]
        plan_b.append(("training", [py, "benchmarks/bench_training.py", *size, *threads]))
    if (HERE / "bench_eval.py").is_file():  # issue 3: toughen's `standard` suite vs AutoAttack
        # after training, so that the other lane has trained the model by then
        size = [] if args.full else ["--n", "20" if args.quick else "50"]
        size += ["--no-doc", "--no-art"] if args.quick else []
        plan_b.append(("eval", [py, "benchmarks/bench_eval.py", "--run", run, *size, *threads]))
    only = set(args.only.split(",")) if args.only else None
    plan_a = [(n, c) for n, c in plan_a if only is None or n in only or n == "model"]
    plan_b = [(n, c) for n, c in plan_b if only is None or n in only]

    times: dict[str, float] = {}
    failed: list[str] = []
    model_ready = threading.Event()
    if not any(name == "model" for name, _ in plan_a):
        model_ready.set()
    # one torch thread per script in a lane (the scripts that take --threads get it too)
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if lanes == 2 else None

    def run_lane(plan, core):
        for name, cmd in plan:
            if name in ("attacks", "eval"):
                model_ready.wait()
            if core is not None:
                cmd = ["taskset", "-c", str(core), *cmd]
            print(f"\n=== {name}: {' '.join(Path(c).name if c == py else c for c in cmd)}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL if name == "model" else None)
            times[name] = time.perf_counter() - t0
            if rc != 0:
                failed.append(f"{name} (exit {rc})")
            if name == "model":
                if rc != 0:  # nothing to attack: the lanes' attack and eval steps would fail
                    sys.exit(f"training the benchmark model failed (exit {rc})")
                model_ready.set()

    if lanes == 2:
        print(f"two lanes, one core each: {[n for n, _ in plan_a]} on core 0, {[n for n, _ in plan_b]} on core 1",
              flush=True)
        other = threading.Thread(target=run_lane, args=(plan_b, 1))
        other.start()
        run_lane(plan_a, 0)
        other.join()
    else:
        run_lane(plan_a + plan_b, None)
    print("\n" + "\n".join(f"{name}: {sec / 60:.1f} min" for name, sec in times.items()))
    print(f"total: {(time.perf_counter() - t_all) / 60:.1f} min; docs/benchmarks.md and benchmarks/results/*.json")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
