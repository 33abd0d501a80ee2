"""BatchNorm's mode while the training attack is crafted (`--attack-bn train` vs `eval`), side by side.

    python benchmarks/bench_attack_bn.py [--seeds 0 1 2] [--modes train eval] [--out /tmp/bench_attack_bn]

small_cnn with a BatchNorm after each convolution (model option batchnorm) on mnist5k, `pgd` at
eps = 0.3 (L-inf) with the training-suite benchmark's schedule (Adam, one-cycle lr 1e-3, batch 128,
10 epochs, eps warm-up over the first third, PGD-10, validation PGD-5), for each seed and mode in
turn. Each run's selected model is scored by the `standard` suite (amp auto) on the first 200 test
digits. Prints one JSON line per run. Not a test: about 8 minutes a run on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import toughen  # noqa: E402
from toughen.data import load_data  # noqa: E402
from toughen.runs import load, read_jsonl  # noqa: E402
from toughen.train import TrainConfig, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", choices=["train", "eval"], default=["train", "eval"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_attack_bn"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_data("mnist5k")
    x, y = splits.x_test[:200], splits.y_test[:200]
    for seed in args.seeds:
        for mode in args.modes:
            out = args.out / f"{mode}_seed{seed}"
            cfg = TrainConfig(data="mnist5k", model_options={"batchnorm": True}, eps=0.3, epochs=10, steps=10,
                              eps_warmup=1 / 3, eval_steps=0, val_attack_steps=5, seed=seed, attack_bn=mode)
            start = time.perf_counter()
            train(cfg, out, progress=False)
            seconds = time.perf_counter() - start
            best = max(read_jsonl(out / "metrics.jsonl"),
                       key=lambda r: (r["val_robust_accuracy"], r["val_clean_accuracy"]))
            result = toughen.evaluate(load(out), x, y, suite="standard", eps=0.3, amp="auto")
            print(json.dumps({
                "seed": seed, "attack_bn": mode, "train_seconds": round(seconds), "selected_epoch": best["epoch"],
                "val_robust": best["val_robust_accuracy"], "clean": result["clean_accuracy"],
                "standard": result["robust_accuracy"],
                "after_each_attack": [round(a["robust_accuracy"], 3) for a in result["per_attack"]],
            }), flush=True)


if __name__ == "__main__":
    main()
