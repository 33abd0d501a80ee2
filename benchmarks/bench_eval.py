"""Benchmark: toughen's `standard` suite against torchattacks' AutoAttack (version="standard").

Same model, same examples, same machine, one process: robust accuracy side by side, the
examples each one fooled that the other missed, and the time ratio. Also PGD-20 alone and the
`quick` suite, to check the ordering standard <= quick <= PGD-20.

    .venv/bin/pip install --no-deps torchattacks   # the `bench` extra; --no-deps keeps your torch
    .venv/bin/python benchmarks/bench_eval.py --run /work/demo_model/pgd --n 300

Not a test: it takes minutes. Writes benchmarks/results/eval.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import toughen
from toughen.attacks import Attack
from toughen.data import load_data
from toughen.runs import read_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="/work/demo_model/pgd", help="run directory of the model to evaluate")
    ap.add_argument("--n", type=int, default=300, help="first N test examples")
    ap.add_argument("--eps", type=float, default=None, help="default: the run's training eps")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval.json"))
    args = ap.parse_args()

    import torchattacks  # optional benchmark dependency (pyproject's `bench` extra)

    torch.set_num_threads(args.threads)
    cfg = read_config(args.run)
    train = cfg["train"]
    eps = args.eps if args.eps is not None else train["eps"]
    bounds = tuple(cfg["data_info"]["bounds"])
    model = toughen.load(args.run)
    splits = load_data(train["data"], train["data_dir"], train["val_size"])
    x, y = splits.x_test[: args.n], splits.y_test[: args.n]
    n = len(x)

    def run(suite):
        r = toughen.evaluate(model, x, y, suite=suite, eps=eps, norm="linf", bounds=bounds, seed=args.seed,
                             batch_size=n, progress=True)
        print(f"  {r['suite'] if isinstance(suite, str) else suite[0].label}: "
              f"{100 * r['robust_accuracy']:.1f}% in {r['seconds']:.1f}s", flush=True)
        return r

    print(f"{args.run}: n={n}, eps={eps}, threads={args.threads}", flush=True)
    pgd20 = run([Attack("pgd", {"steps": 20, "early_stop": True})])
    quick = run("quick")
    ours = run("standard")

    with torch.no_grad():
        clean = model(x).argmax(1) == y
    atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=splits.num_classes,
                                  seed=args.seed)
    t0 = time.perf_counter()
    x_adv = atk(x, y)
    theirs_seconds = time.perf_counter() - t0
    with torch.no_grad():
        theirs_robust = (model(x_adv).argmax(1) == y) & clean
    print(f"  torchattacks AutoAttack: {100 * theirs_robust.float().mean():.1f}% in {theirs_seconds:.1f}s", flush=True)

    ours_robust = ours["robust"]
    result = {
        "run": str(args.run), "n": n, "eps": eps, "norm": "linf", "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": torch.get_num_threads(),
        "torch": torch.__version__, "torchattacks": torchattacks.__version__, "toughen": toughen.__version__,
        "clean_accuracy": clean.float().mean().item(),
        "pgd20": {"robust_accuracy": pgd20["robust_accuracy"], "seconds": pgd20["seconds"]},
        "quick": {"robust_accuracy": quick["robust_accuracy"], "seconds": quick["seconds"],
                  "per_attack": quick["per_attack"]},
        "standard": {"robust_accuracy": ours["robust_accuracy"], "seconds": ours["seconds"],
                     "per_attack": ours["per_attack"]},
        "torchattacks_autoattack": {"robust_accuracy": theirs_robust.float().mean().item(),
                                    "seconds": theirs_seconds},
        "only_ours_fooled": int((~ours_robust & theirs_robust).sum()),
        "only_theirs_fooled": int((ours_robust & ~theirs_robust).sum()),
        "time_ratio": ours["seconds"] / theirs_seconds,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    print()
    print("| evaluation | robust accuracy | seconds |")
    print("|---|---:|---:|")
    print(f"| clean | {pct(result['clean_accuracy'])} | |")
    print(f"| PGD-20 (CE) | {pct(pgd20['robust_accuracy'])} | {pgd20['seconds']:.1f} |")
    print(f"| toughen `quick` (PGD-20 CE, PGD-20 margin) | {pct(quick['robust_accuracy'])} | {quick['seconds']:.1f} |")
    for row in ours["per_attack"]:
        print(f"| &nbsp; toughen `standard` after {row['attack']} | {pct(row['robust_accuracy'])} "
              f"| {row['seconds']:.1f} |")
    print(f"| **toughen `standard`** | **{pct(ours['robust_accuracy'])}** | **{ours['seconds']:.1f}** |")
    print(f"| **torchattacks AutoAttack (standard)** | **{pct(result['torchattacks_autoattack']['robust_accuracy'])}**"
          f" | **{theirs_seconds:.1f}** |")
    print(f"\nonly toughen fooled: {result['only_ours_fooled']}, only torchattacks fooled: "
          f"{result['only_theirs_fooled']}; time ratio toughen / torchattacks: {result['time_ratio']:.2f}")


if __name__ == "__main__":
    main()
