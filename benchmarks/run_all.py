"""Run every benchmark against the peers, one after the other, in one go (`make bench`).

    .venv/bin/python benchmarks/run_all.py [--run RUN_DIR] [--quick]

The attack-strength and evaluation benchmarks need a PGD-trained mnist5k model: ``--run``, else
``runs/demo/pgd`` (what ``make demo`` trains), else a short one trained here once into
``runs/bench/pgd`` (4 epochs, about a minute on 2 cores) and reused afterwards.

Each script writes its own section of docs/benchmarks.md and its JSON under benchmarks/results/.
On a machine with two or more cores the scripts run in two lanes at once, each pinned to one core
with one torch thread (attacks and ART training on core 0; the suite comparison and single-step
training on core 1): every ratio is between contenders of one script, which share a core, and the
whole run takes about half the time. ``--serial`` runs them one after the other on all cores.
They are sized down (60 evaluation examples, only pgd and atta in the 10-epoch training
comparison, CIFAR-shaped batch of 2; ``--full`` keeps their own defaults) so that the whole run finishes in under 15 minutes on an idle
2-core CPU; this prints each script's time.
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


def pick_model(run: str | None) -> str:
    if run:
        return run
    # Relative to the repository (the scripts run there): the docs then name runs/demo/pgd, not a clone's path.
    for candidate in (Path("runs") / "demo" / "pgd", Path("runs") / "bench" / "pgd"):
        if (ROOT / candidate / "model.safetensors").is_file():
            return str(candidate)
    from toughen.train import TrainConfig, train

    out = ROOT / "runs" / "bench" / "pgd"
    print(f"no PGD-trained model given: training one into {out} (4 epochs)", flush=True)
    cfg = TrainConfig(recipe="pgd", epochs=4, eps=0.3, steps=10, eps_warmup=1 / 3, eval_steps=0, amp="bf16",
                      channels_last=True)
    train(cfg, out, overwrite=True, progress=False)
    return str(out.relative_to(ROOT))


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
    run = pick_model(args.run)
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
    plan_b = []
    if (HERE / "bench_eval.py").is_file():  # issue 3: toughen's `standard` suite vs AutoAttack
        size = [] if args.full else ["--n", "20" if args.quick else "60"]
        size += ["--no-doc", "--no-art"] if args.quick else []
        plan_b.append(("eval", [py, "benchmarks/bench_eval.py", "--run", run, *size, *threads]))
    if (HERE / "bench_training.py").is_file():  # issue 4: single-step vs PGD training
        # pgd and atta at the full 10 epochs (atta needs epochs to accumulate its steps); the other
        # single-step recipes only with --full.
        size = [] if args.full else ["--epochs", "1", "--no-doc", "--recipes", "pgd,atta"] if args.quick \
            else ["--recipes", "pgd,atta"]
        plan_b.append(("training", [py, "benchmarks/bench_training.py", *size, *threads]))
    only = set(args.only.split(",")) if args.only else None
    plan_a = [(n, c) for n, c in plan_a if only is None or n in only]
    plan_b = [(n, c) for n, c in plan_b if only is None or n in only]

    times: dict[str, float] = {}
    failed: list[str] = []

    def run_lane(plan, core):
        for name, cmd in plan:
            if core is not None:
                cmd = ["taskset", "-c", str(core), *cmd]
            print(f"\n=== {name}: {' '.join(Path(c).name if c == py else c for c in cmd)}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.call(cmd, cwd=ROOT)
            times[name] = time.perf_counter() - t0
            if rc != 0:
                failed.append(f"{name} (exit {rc})")

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
