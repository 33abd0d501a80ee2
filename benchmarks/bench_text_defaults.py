"""The measurement behind `text_augment`'s defaults: settings tried on the validation split.

    python benchmarks/bench_text_defaults.py [--epochs 3] [--budget 3] [--seeds 0]

char_cnn on prompt_injection, `--epochs` epochs, the threat being `char_obfuscate` (every candidate
edit tried) at `--budget` edits. For each setting of the training attack -- the training budget as
a multiple of the evaluated one, the candidate edits sampled per step (`max_candidates`), the share
of each batch attacked (`fraction`) -- and for `standard`, it trains one run per seed and measures
on the validation split (all 240 texts: what the defaults are chosen on) and on the test split (600
texts: what is reported). Writes benchmarks/results/text_defaults.json and the "Text defaults"
section of docs/benchmarks.md. Not a test: one core, about 2 minutes per text_augment run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402

from toughen.text.data import load_text_data  # noqa: E402
from toughen.text.evaluation import evaluate_text_attack  # noqa: E402
from toughen.text.train import TextTrainConfig, load_text_run, train_text  # noqa: E402

# text_augment settings: "scale" (the training budget as a multiple of the evaluated one) and any
# TextTrainConfig field, as KEY=VALUE pairs
SETTINGS = ["scale=1,max_candidates=24,fraction=0.5", "scale=1,max_candidates=24,fraction=0.5,attack_eval_mode=1",
            "scale=2,max_candidates=24,fraction=0.5,attack_eval_mode=1",
            "scale=1,max_candidates=24,fraction=1,attack_eval_mode=1",
            "scale=2,max_candidates=16,fraction=1,attack_eval_mode=1"]
FIELD_TYPES = {"recipe": str, "scale": float, "max_candidates": int, "fraction": float, "lam": float, "lr": float,
               "attack_eval_mode": lambda v: bool(int(v)), "batch_size": int}


def parse_setting(text: str) -> dict:
    out = {}
    for pair in text.split(","):
        key, value = pair.split("=", 1)
        out[key] = FIELD_TYPES[key](value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--budget", type=int, default=3, help="the evaluated budget (edits)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="*", default=SETTINGS,
                        help="text_augment settings as KEY=VALUE,... (scale, max_candidates, fraction, lam, lr, "
                        "attack_eval_mode, batch_size); default: the built-in list")
    parser.add_argument("--no-standard", action="store_true", help="skip the standard baseline")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_text_defaults"))
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--key", default="text_defaults", help="the results/docs section name")
    args = parser.parse_args()
    torch.set_num_threads(1)  # char_cnn's batches are small: one thread is fastest (docs/text.md)
    settings = [(text, parse_setting(text)) for text in args.settings]
    info = common.machine_info()
    splits = load_text_data("prompt_injection")
    runs = []
    for seed in args.seeds:
        for setting in ([] if args.no_standard else [None]) + settings:
            if setting is None:
                name = "standard"
                cfg = TextTrainConfig(recipe="standard", epochs=args.epochs, budget=args.budget, seed=seed)
            else:
                name, fields = setting
                fields = dict(fields)
                scale = fields.pop("scale", 1)
                fields.setdefault("recipe", "text_augment")
                cfg = TextTrainConfig(epochs=args.epochs, budget=math.ceil(scale * args.budget),
                                      eval_budget=args.budget, seed=seed, **fields)
            out = args.out / f"{name.replace(',', '_').replace('=', '')}_seed{seed}"
            print(f"training {name}, seed {seed}", file=sys.stderr, flush=True)
            summary = train_text(cfg, out, overwrite=True, progress=False)
            model = load_text_run(out)
            start = time.perf_counter()
            val = evaluate_text_attack(model, splits.x_val, splits.y_val, "char_obfuscate", budget=args.budget,
                                       seed=seed, n_examples=0)
            runs.append({
                "setting": name, "seed": seed, "train_budget": cfg.budget, "max_candidates": cfg.max_candidates,
                "fraction": cfg.fraction, "attack_eval_mode": cfg.attack_eval_mode, "val_clean": val["clean_accuracy"], "val_success": val["attack_success_rate"],
                "test_clean": summary["clean_accuracy"], "test_success": summary["attack_success_rate"],
                "train_seconds": summary["train_seconds"], "eval_seconds": time.perf_counter() - start,
            })
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    info["load_average_1min_end"] = common.load_average()
    result = {"machine": info, "setup": {"data": "prompt_injection", "model": "char_cnn", "epochs": args.epochs,
                                         "budget": args.budget, "seeds": args.seeds}, "runs": runs}
    common.publish(args.key, result, render(result), doc=not args.no_doc)


def render(result: dict) -> str:
    s = result["setup"]
    by: dict[str, list[dict]] = {}
    for r in result["runs"]:
        by.setdefault(r["setting"], []).append(r)
    std = by.get("standard")
    mean = lambda rows, k: statistics.mean(r[k] for r in rows)  # noqa: E731
    rows = []
    for name, rs in by.items():
        ratio = (f"{mean(rs, 'test_success') / mean(std, 'test_success'):.2f}"
                 if std and mean(std, "test_success") else "-")
        cost = f"{100 * (mean(std, 'test_clean') - mean(rs, 'test_clean')):+.1f}" if std else "-"
        rows.append([name, len(rs), rs[0]["train_budget"], common.fmt_pct(mean(rs, "val_clean")),
                     common.fmt_pct(mean(rs, "val_success")), common.fmt_pct(mean(rs, "test_clean")),
                     common.fmt_pct(mean(rs, "test_success")), ratio, cost, f"{mean(rs, 'train_seconds'):.0f}"])
    return "\n".join([
        "## Text defaults (`benchmarks/bench_text_defaults.py`)", "",
        common.machine_line(result["machine"]), "",
        f"char_cnn on prompt_injection, {s['epochs']} epochs, seeds {s['seeds']}, one torch thread; the threat is "
        f"`char_obfuscate` (every candidate edit) at {s['budget']} edits. A setting: `scale` (the training attack's budget "
        "as a multiple of that one), `max_candidates` (edits sampled per step), `fraction` (of each batch attacked), "
        "`attack_eval_mode` (1: the training attack searches with dropout off). Success: of the "
        "texts classified correctly, the share the attack flips (validation: all 240 texts, where the defaults are "
        "chosen; test: 600 texts). Ratio and clean cost: against `standard` on the test split (mean over seeds).", "",
        common.md_table(["setting", "seeds", "train budget", "val clean", "val success", "test clean",
                         "test success", "ratio", "clean cost (points)", "train s"], rows,
                        right={1, 2, 3, 4, 5, 6, 7, 8, 9}),
    ])


if __name__ == "__main__":
    main()
