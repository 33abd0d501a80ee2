"""Run every benchmark against the peers, one after the other, in one go (`make bench`).

    .venv/bin/python benchmarks/run_all.py [--run RUN_DIR] [--quick]

The attack-strength and evaluation benchmarks need a PGD-trained mnist5k model: ``--run``, else
``runs/demo/pgd`` (what ``make demo`` trains), else a short one trained here once into
``runs/bench/pgd`` (4 epochs, about a minute on 2 cores) and reused afterwards.

Each script writes its own section of docs/benchmarks.md and its JSON under benchmarks/results/.
Scripts of other issues (bench_eval.py, bench_training.py) run when present, sized down (100
evaluation examples, 3 training epochs; ``--full`` keeps their own defaults) so that the whole run
finishes in under 15 minutes on an idle 2-core CPU; this prints each script's time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def pick_model(run: str | None) -> str:
    if run:
        return run
    for candidate in (ROOT / "runs" / "demo" / "pgd", ROOT / "runs" / "bench" / "pgd"):
        if (candidate / "model.safetensors").is_file():
            return str(candidate)
    from toughen.train import TrainConfig, train

    out = ROOT / "runs" / "bench" / "pgd"
    print(f"no PGD-trained model given: training one into {out} (4 epochs)", flush=True)
    cfg = TrainConfig(recipe="pgd", epochs=4, eps=0.3, steps=10, eps_warmup=1 / 3, eval_steps=0, amp="bf16",
                      channels_last=True)
    train(cfg, out, overwrite=True, progress=False)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="run directory of a PGD-trained mnist5k model")
    ap.add_argument("--quick", action="store_true", help="smoke-run each script (no docs written)")
    ap.add_argument("--only", default=None, help="comma-separated subset: attacks,art-training,eval,training")
    ap.add_argument("--threads", default=None, help="torch threads for the scripts that take --threads")
    ap.add_argument("--full", action="store_true",
                    help="other issues' scripts at their own (longer) defaults instead of the 15-minute sizes")
    args = ap.parse_args()

    t_all = time.perf_counter()
    run = pick_model(args.run)
    py = sys.executable
    quick = ["--quick"] if args.quick else []
    quick += ["--threads", args.threads] if args.threads else []
    plan = [
        ("attacks", [py, "benchmarks/bench_attacks.py", "--run", run, *quick]),
        ("art-training", [py, "benchmarks/bench_art_training.py", *quick]),
    ]
    if (HERE / "bench_eval.py").is_file():  # issue 3: toughen's `standard` suite vs AutoAttack
        size = [] if args.full else ["--n", "20" if args.quick else "100"]
        size += ["--threads", args.threads] if args.threads else []
        plan.append(("eval", [py, "benchmarks/bench_eval.py", "--run", run, *size]))
    if (HERE / "bench_training.py").is_file():  # issue 4: single-step vs PGD training
        size = [] if args.full else ["--epochs", "1" if args.quick else "3"]
        plan.append(("training", [py, "benchmarks/bench_training.py", *size]))
    only = set(args.only.split(",")) if args.only else None

    times: dict[str, float] = {}
    failed: list[str] = []
    for name, cmd in plan:
        if only is not None and name not in only:
            continue
        print(f"\n=== {name}: {' '.join(Path(c).name if c == py else c for c in cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        times[name] = time.perf_counter() - t0
        if rc != 0:
            failed.append(f"{name} (exit {rc})")
    print("\n" + "\n".join(f"{name}: {sec / 60:.1f} min" for name, sec in times.items()))
    print(f"total: {(time.perf_counter() - t_all) / 60:.1f} min; docs/benchmarks.md and benchmarks/results/*.json")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
