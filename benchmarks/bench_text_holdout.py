"""Held-out injection styles: for each family of the built-in prompt-injection set, `standard` and
`text_augment` trained without it, tested on it.

    python benchmarks/bench_text_holdout.py [--epochs 3] [--budget 3] [--seed 0]

char_cnn, every other setting the default of `toughen train --data prompt_injection --holdout-family
NAME`. Each run's test split is the held-out family's texts (all of them) beside the usual benign
test texts; reported: the held-out family's detection rate (clean) and its robust accuracy under
`char_obfuscate` at `--budget` edits, the benign texts' accuracy, and the same detector trained on
every family for reference. Writes benchmarks/results/text_holdout.json and the "Held-out injection
styles" section of docs/benchmarks.md. Not a test: one core, about 15 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402

from toughen.text.injection import FAMILIES  # noqa: E402
from toughen.text.train import TextTrainConfig, train_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--budget", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--recipes", nargs="+", default=["standard", "text_augment"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_text_holdout"))
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = common.machine_info()
    rows = []
    for recipe in args.recipes:
        for family in [None, *args.families]:
            cfg = TextTrainConfig(recipe=recipe, epochs=args.epochs, budget=args.budget, seed=args.seed,
                                  holdout_family=family)
            print(f"training {recipe}, holding out {family}", file=sys.stderr, flush=True)
            s = train_text(cfg, args.out / f"{recipe}_{family or 'none'}", overwrite=True, progress=False)
            fam = s["per_family"]
            rows.append({"recipe": recipe, "holdout_family": family, "per_family": fam,
                         "clean_accuracy": s["clean_accuracy"], "attack_success_rate": s["attack_success_rate"],
                         "train_seconds": s["train_seconds"]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    info["load_average_1min_end"] = common.load_average()
    result = {"machine": info, "setup": {"data": "prompt_injection", "model": "char_cnn", "epochs": args.epochs,
                                         "budget": args.budget, "seed": args.seed}, "rows": rows}
    common.publish("text_holdout", result, render(result), doc=not args.no_doc)


def render(result: dict) -> str:
    s = result["setup"]
    seen = {r["recipe"]: r["per_family"] for r in result["rows"] if r["holdout_family"] is None}
    table = []
    for r in result["rows"]:
        fam = r["holdout_family"]
        if fam is None:
            continue
        held, benign = r["per_family"][fam], r["per_family"]["benign"]
        ref = seen.get(r["recipe"], {}).get(fam)
        table.append([f"`{fam}`", r["recipe"], held["n"], common.fmt_pct(held["clean_accuracy"]),
                      common.fmt_pct(held["robust_accuracy"]), common.fmt_pct(benign["clean_accuracy"]),
                      common.fmt_pct(ref["clean_accuracy"]) if ref else "-",
                      common.fmt_pct(ref["robust_accuracy"]) if ref else "-"])
    table.sort(key=lambda row: (row[0], row[1]))
    return "\n".join([
        "## Held-out injection styles (`benchmarks/bench_text_holdout.py`)", "",
        common.machine_line(result["machine"]), "",
        f"char_cnn on prompt_injection, {s['epochs']} epochs, seed {s['seed']}, defaults otherwise; each row trains "
        "without one family (`--holdout-family`) and tests on all of its texts beside the 324 benign test texts. "
        f"Detected: the family's clean accuracy (its detection rate at argmax); robust: under `char_obfuscate` at "
        f"{s['budget']} edits. The last two columns: the same family's test texts for the same recipe trained on "
        "every family (seen).", "",
        common.md_table(["held-out family", "recipe", "texts", "detected (unseen)", "robust (unseen)",
                         "benign correct", "detected (seen)", "robust (seen)"], table, right={2, 3, 4, 5, 6, 7}),
    ])


if __name__ == "__main__":
    main()
