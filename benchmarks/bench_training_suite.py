"""Training recipes scored by the `standard` suite, over seeds, side by side in one run.

    python benchmarks/bench_training_suite.py [--seeds 0 1 2] [--epochs 10] [--n 200]

small_cnn on mnist5k at eps = 0.3 (L-inf), the demo's schedule (Adam, one-cycle lr 1e-3, batch
128, eps warm-up over the first third, 10-step attacks), for each seed in turn and each variant in
turn within a seed: `pgd`, `trades`, `trades --awp 0.005`, `trades --awp 0.005 --ema 0.995` and
`atta_free --ema 0.995`. Each run's model (its best validation epoch, the EMA's where --ema is on)
is scored by ``toughen.evaluate(suite="standard", amp="auto")`` -- APGD-CE, APGD-T, FAB-T and
Square, AutoAttack's standard version -- on the first --n test digits, not by PGD: PGD-50 reports
about twice the robust accuracy the suite leaves on these models. Training time is each run's
summed epoch wall time (training steps and validation). More variants by name with --variants:
`pgd --select-attack apgd`, `pgd --awp`, `mart`, and on small_cnn with BatchNorm `pgd [batchnorm]`,
`pgd [batchnorm] --attack-bn eval` (docs/training.md) and `trades [batchnorm]`, each compared with
the `pgd` of its own model. Writes benchmarks/results/training_suite.json and the "Training recipes
under the standard suite" section of docs/benchmarks.md. Not a test: about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402

import toughen  # noqa: E402
from toughen.data import load_data  # noqa: E402
from toughen.runs import load  # noqa: E402
from toughen.train import TrainConfig, train  # noqa: E402

# name -> the TrainConfig fields that differ from the shared schedule
VARIANTS = {
    "pgd": {"recipe": "pgd"},
    "trades": {"recipe": "trades"},
    "trades --awp": {"recipe": "trades", "awp": 0.005},
    "trades --awp --ema": {"recipe": "trades", "awp": 0.005, "ema": 0.995},
    "atta_free --ema": {"recipe": "atta_free", "ema": 0.995},
    # not in the default list: the same training as pgd, the best epoch picked by APGD-CE + APGD-DLR
    "pgd --select-attack apgd": {"recipe": "pgd", "select_attack": "apgd"},
    # not in the default list either: AWP on pgd, and MART (the third recipe AWP can modify)
    "pgd --awp": {"recipe": "pgd", "awp": 0.005},
    "mart": {"recipe": "mart"},
    # small_cnn with a BatchNorm after each convolution, compared with pgd on that model: BatchNorm's
    # mode while the training attack is crafted (docs/training.md), and trades
    "pgd [batchnorm]": {"recipe": "pgd", "model_options": {"batchnorm": True}},
    "pgd [batchnorm] --attack-bn eval": {"recipe": "pgd", "model_options": {"batchnorm": True}, "attack_bn": "eval"},
    "trades [batchnorm]": {"recipe": "trades", "model_options": {"batchnorm": True}},
}
DEFAULT_VARIANTS = ["pgd", "trades", "trades --awp", "trades --awp --ema", "atta_free --ema"]
GOAL_COMBINATIONS = ["trades", "trades --awp", "trades --awp --ema"]  # the first goal's, against pgd


def _pgd_of_its_model(name: str) -> str:
    """The variant a variant is compared with: plain pgd on the same model."""
    options = VARIANTS[name].get("model_options")
    pgd = {"recipe": "pgd", **({"model_options": options} if options else {})}
    return next(n for n, v in VARIANTS.items() if v == pgd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n", type=int, default=200, help="the first N test digits the suite scores")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="for every variant (docs/training.md "
                        "compares 0.2 with 0: run it with --key training_suite_ls02 --no-doc)")
    parser.add_argument("--key", default="training_suite", help="the results/docs section name")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_training_suite"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--reuse", action="store_true", help="keep the runs under --out that this script finished "
                        "with the same settings (their bench_run.json) instead of training them again")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = common.machine_info()
    splits = load_data("mnist5k")
    x, y = splits.x_test[: args.n], splits.y_test[: args.n]
    runs = []
    for seed in args.seeds:
        for name in args.variants:
            cfg = TrainConfig(data="mnist5k", eps=0.3, epochs=args.epochs, steps=10, eps_warmup=1 / 3,
                              eval_steps=0, val_attack_steps=5, seed=seed,
                              label_smoothing=args.label_smoothing, **VARIANTS[name])
            # e.g. trades+awp_seed0, pgd_batchnorm_+attack-bn_eval_seed0
            slug = re.sub(r"[^\w+-]+", "_", name.replace(" --", "+"))
            out = args.out / f"{slug}_seed{seed}"
            done = out / "bench_run.json"
            if args.reuse and done.is_file() and _same_config(out, cfg):
                runs.append(json.loads(done.read_text()))  # a run this script finished before, same settings
                print(f"reusing {name}, seed {seed}", file=sys.stderr, flush=True)
                continue
            print(f"training {name}, seed {seed}", file=sys.stderr, flush=True)
            summary = train(cfg, out, overwrite=True, progress=False)
            model = load(out).eval()
            start = time.perf_counter()
            r = toughen.evaluate(model, x, y, suite="standard", eps=0.3, amp="auto", batch_size=len(x),
                                 seed=seed, indicators=False)
            runs.append({
                "variant": name, "seed": seed, "clean_accuracy": r["clean_accuracy"],
                "standard_accuracy": r["robust_accuracy"], "train_seconds": summary["train_seconds"],
                "selected_epoch": summary["selected_epoch"], "val_robust_accuracy": summary["best_val_robust_accuracy"],
                "cost_multiplier": summary["cost_multiplier"],
                "guard_events": len(summary["guard"]["events"]), "eval_seconds": time.perf_counter() - start,
                "precision": summary["precision"]["label"], "eval_precision": r["precision"]["label"],
            })
            done.write_text(json.dumps(runs[-1]) + "\n")
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    info["load_average_1min_end"] = common.load_average()
    result = {
        "machine": info,
        "setup": {"data": "mnist5k", "model": "small_cnn", "eps": 0.3, "norm": "linf", "epochs": args.epochs,
                  "seeds": args.seeds, "label_smoothing": args.label_smoothing, "eval": f"standard suite (amp auto), first {args.n} test digits"},
        "runs": runs,
        "rows": _aggregate(runs),
    }
    common.publish(args.key, result, render(result), doc=not args.no_doc)


def _same_config(out: Path, cfg: TrainConfig) -> bool:
    """Whether the run directory ``out`` was trained with ``cfg`` (its config.yaml's train section)."""
    from toughen.errors import ToughenUsageError
    from toughen.runs import read_config

    try:
        saved = read_config(out)["train"]
    except (OSError, KeyError, ToughenUsageError):  # no config, or not readable: train it again
        return False
    return all(saved.get(k) == v for k, v in cfg.to_dict().items())


def _aggregate(runs: list[dict]) -> list[dict]:
    """Per variant: the mean over seeds of each number, and the spread of the robust accuracy;
    robust accuracy and time also relative to the means of pgd on the same model."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        robust = [r["standard_accuracy"] for r in mine]
        rows.append({
            "variant": name, "seeds": len(mine),
            "standard_accuracy": statistics.mean(robust), "standard_min": min(robust), "standard_max": max(robust),
            "clean_accuracy": statistics.mean(r["clean_accuracy"] for r in mine),
            "train_seconds": statistics.mean(r["train_seconds"] for r in mine),
            "cost_multiplier": statistics.mean(r["cost_multiplier"] for r in mine),
        })
    by = {r["variant"]: r for r in rows}
    for r in rows:
        pgd = by.get(_pgd_of_its_model(r["variant"]))
        r["points_vs_pgd"] = 100 * (r["standard_accuracy"] - pgd["standard_accuracy"]) if pgd else None
        r["robust_vs_pgd"] = r["standard_accuracy"] / pgd["standard_accuracy"] if pgd and pgd["standard_accuracy"] else None
        r["time_vs_pgd"] = r["train_seconds"] / pgd["train_seconds"] if pgd else None
    return rows


def _goals(rows: list[dict]) -> list[str]:
    by = {r["variant"]: r for r in rows}
    if "pgd" not in by:
        return []
    lines = []
    others = [by[name] for name in GOAL_COMBINATIONS if name in by]
    if others:
        best = max(others, key=lambda r: r["standard_accuracy"])
        met = best["points_vs_pgd"] >= 3 and best["time_vs_pgd"] <= 1.5
        lines.append(f"Goal (the best combination beats `pgd` by at least 3 points of robust accuracy on average at no "
                     f"more than 1.5x its time): {'met' if met else '**missed**'} (`{best['variant']}`: "
                     f"{best['points_vs_pgd']:+.1f} points at {best['time_vs_pgd']:.2f}x).")
    if "atta_free --ema" in by:
        r = by["atta_free --ema"]
        met = r["robust_vs_pgd"] is not None and r["robust_vs_pgd"] >= 0.95 and r["time_vs_pgd"] <= 0.3
        share = f"{100 * r['robust_vs_pgd']:.0f}%" if r["robust_vs_pgd"] is not None else "-"
        lines.append(f"Goal (`atta_free --ema` reaches at least 95% of `pgd`'s robust accuracy in at most 30% of its "
                     f"time): {'met' if met else '**missed**'} ({share} of it in {100 * r['time_vs_pgd']:.0f}% of the time).")
    return lines


def render(result: dict) -> str:
    s = result["setup"]
    rows = []
    for r in result["rows"]:
        vs = f"{r['points_vs_pgd']:+.1f}" if r["points_vs_pgd"] is not None else "-"
        rows.append([f"`{r['variant']}`", r["seeds"], common.fmt_pct(r["clean_accuracy"]),
                     f"{common.fmt_pct(r['standard_accuracy'])} ({common.fmt_pct(r['standard_min'])}-"
                     f"{common.fmt_pct(r['standard_max'])})", vs, f"{r['train_seconds']:.0f}",
                     f"{r['time_vs_pgd']:.2f}x" if r["time_vs_pgd"] is not None else "-",
                     f"{r['cost_multiplier']:.2f}"])
    per_seed = [[f"`{r['variant']}`", r["seed"], common.fmt_pct(r["clean_accuracy"]),
                 common.fmt_pct(r["standard_accuracy"]), f"{r['train_seconds']:.0f}", r["selected_epoch"],
                 r["precision"]] for r in result["runs"]]
    return "\n".join([
        "## Training recipes under the standard suite (`benchmarks/bench_training_suite.py`)", "",
        common.machine_line(result["machine"]), "",
        f"small_cnn on mnist5k, eps = {s['eps']} L-inf, {s['epochs']} epochs each, seeds {s['seeds']} (every variant "
        "of a seed before the next seed), Adam one-cycle lr 1e-3, eps warm-up over the first third, 10-step attacks; "
        "`--awp 0.005`, `--ema 0.995`. The model is each run's best validation epoch (the EMA's with `--ema`); "
        f"robust accuracy is the {s['eval']}: APGD-CE, APGD-T, FAB-T and Square. Training seconds: each run's "
        "summed epoch time (training steps and validation), mean over seeds.", "",
        common.md_table(["variant", "seeds", "clean", "standard suite (min-max)", "points vs pgd", "train seconds",
                         "time vs pgd", "cost (passes / standard)"], rows, right={1, 2, 3, 4, 5, 6, 7}),
        "", *[line + "\n" for line in _goals(result["rows"])],
        "Per run:", "",
        common.md_table(["variant", "seed", "clean", "standard suite", "train seconds", "selected epoch", "precision"],
                        per_seed, right={1, 2, 3, 4, 5}),
    ])


if __name__ == "__main__":
    main()
