"""Single-step training with the guard vs PGD-10 training, side by side in one run.

    python benchmarks/bench_training.py [--epochs 10] [--out /tmp/bench_training]

small_cnn on mnist5k at eps = 0.3 (L-inf), the demo's schedule (Adam, one-cycle lr 1e-3, batch
128, eps warm-up over the first third). Each run's model is its best validation epoch; robust
accuracy is PGD-50 (step 2.5 eps / 50, one random start) on the 1,000 test digits. Training
time is each run's own summed epoch wall time (training steps, guard probes and validation).
Writes benchmarks/results/training.json and the "Training: single-step vs PGD" section of
docs/benchmarks.md. Not a test: about 10 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toughen.attacks import Attack  # noqa: E402
from toughen.data import load_data  # noqa: E402
from toughen.evaluation import attack_correct, clean_correct  # noqa: E402
from toughen.runs import load  # noqa: E402
from toughen.train import TrainConfig, train  # noqa: E402

SECTION = "## Training: single-step vs PGD"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_training"))
    parser.add_argument("--recipes", default="pgd,nfgsm,fgsm_rs")
    args = parser.parse_args()
    splits = load_data("mnist5k")
    rows = []
    for recipe in args.recipes.split(","):
        cfg = TrainConfig(data="mnist5k", recipe=recipe, eps=0.3, epochs=args.epochs, steps=10, eps_warmup=1 / 3,
                          eval_steps=0, val_attack_steps=5)
        print(f"training {recipe}", file=sys.stderr, flush=True)
        summary = train(cfg, args.out / recipe, overwrite=True, progress=False)
        model = load(args.out / recipe)
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        clean = clean_correct(model, splits.x_test, splits.y_test).float().mean().item()
        robust = attack_correct(model, splits.x_test, splits.y_test, Attack("pgd", {"steps": 50, "early_stop": True}),
                                eps=0.3, generator=gen).float().mean().item()
        rows.append({
            "recipe": recipe, "guard": summary["guard"]["active"], "guard_events": summary["guard"]["events"],
            "final_recipe": summary["guard"]["final_recipe"], "selected_epoch": summary["selected_epoch"],
            "clean_accuracy": clean, "pgd50_accuracy": robust, "train_seconds": summary["train_seconds"],
            "step_seconds": summary["step_seconds"], "cost_multiplier": summary["cost_multiplier"],
            "eval_seconds": time.perf_counter() - start,
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    pgd = next(r for r in rows if r["recipe"] == "pgd")
    for r in rows:
        r["robust_vs_pgd"] = r["pgd50_accuracy"] / pgd["pgd50_accuracy"] if pgd["pgd50_accuracy"] else None
        r["time_vs_pgd"] = r["train_seconds"] / pgd["train_seconds"]
    result = {
        "setup": {"data": "mnist5k", "model": "small_cnn", "eps": 0.3, "norm": "linf", "epochs": args.epochs,
                  "eval": "pgd-50, 1000 test digits", "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")},
        "rows": rows,
    }
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    write_section(result)


def write_section(result: dict) -> None:
    s = result["setup"]
    lines = [
        SECTION, "",
        f"`python benchmarks/bench_training.py --epochs {s['epochs']}` ({s['date']}, torch {s['torch']}, "
        f"{s['threads']} CPU threads, a machine shared with other jobs: times are comparable within the table only). "
        f"small_cnn on mnist5k, eps = {s['eps']} L-inf, {s['epochs']} epochs, Adam one-cycle lr 1e-3, eps warm-up over "
        "the first third, best validation epoch; robust accuracy under PGD-50 on the 1,000 test digits. "
        "Numbers: benchmarks/results/training.json.", "",
        "| recipe | guard | clean | PGD-50 | vs pgd | train seconds | vs pgd | cost (passes / standard) | guard events |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        events = "; ".join(f"epoch {e['epoch']}: {e['switched']}" for e in r["guard_events"]) or "none"
        vs = f"{100 * r['robust_vs_pgd']:.0f}%" if r["robust_vs_pgd"] is not None else "-"
        lines.append(
            f"| {r['recipe']} | {'on' if r['guard'] else '-'} | {100 * r['clean_accuracy']:.1f}% | "
            f"{100 * r['pgd50_accuracy']:.1f}% | {vs} | {r['train_seconds']:.0f} | {100 * r['time_vs_pgd']:.0f}% | "
            f"{r['cost_multiplier']:.2f} | {events} |"
        )
    section = "\n".join(lines) + "\n"
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if SECTION in text:  # replace only our own section, up to the next "## " heading
        text = re.sub(re.escape(SECTION) + r".*?(?=\n## |\Z)", section.rstrip("\n") + "\n", text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
