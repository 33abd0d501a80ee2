"""Benchmark: toughen's `pgd` training recipe against ART's AdversarialTrainerMadryPGD.

Madry et al. (2018) adversarial training of small_cnn on mnist5k with the same settings on both
sides: eps, PGD steps and step size, one uniform random start, epochs, batch size, Adam with a
constant learning rate, no eps warm-up, the same initial weights (seeded), the final epoch's
weights. ART's attack runs on whole batches (``batch_size`` = the training batch; its default of
32 would split each batch into four attack calls). toughen runs twice: in fp32, and with
``amp="bf16"`` and ``channels_last`` (its mixed-precision option).

Time per epoch is the time of the training pass only: toughen's loop also validates after each
epoch (PGD on the validation split), which is logged separately and left out; the total wall
time of each run is reported too. Robust accuracy of every trained model is measured the same
way, afterwards: toughen's PGD-20 (fp32, worst iterate) on the test split.

    .venv/bin/python benchmarks/bench_art_training.py                  # 2 epochs each, a few minutes
    .venv/bin/python benchmarks/bench_art_training.py --quick          # smoke run

Writes benchmarks/results/art_training.json and the `art-training` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # ART's trainer draws progress bars on stderr; keep the log readable

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from toughen.attacks import pgd  # noqa: E402
from toughen.data import load_data  # noqa: E402
from toughen.models import build_model  # noqa: E402
from toughen.runs import load  # noqa: E402
from toughen.train import TrainConfig, train  # noqa: E402


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> dict[str, float]:
    """Clean and PGD robust accuracy, in fp32, the same for every trained model."""
    model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    x_adv = pgd(model, x, y, eps=eps, steps=steps, early_stop=True, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    return {"clean_accuracy": clean, "robust_accuracy": robust}


def run_toughen(args, amp: str | None) -> dict[str, Any]:
    cfg = TrainConfig(
        data="mnist5k", model="small_cnn", recipe="pgd", eps=args.eps, norm="linf", steps=args.steps,
        epochs=args.epochs, batch_size=args.batch_size, optimizer="adam", lr=args.lr, lr_schedule="constant",
        eps_warmup=0.0, seed=args.seed, eval_steps=0, select="last", amp=amp, channels_last=amp is not None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        train(cfg, Path(tmp) / "run", progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        model = load(Path(tmp) / "run")
    return {"model": model, "epoch_seconds": [r["seconds"] for r in rows],
            "val_seconds": [r["val_seconds"] for r in rows], "wall_seconds": wall, "cpu_seconds": cpu}


def run_art(args, splits) -> dict[str, Any]:
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(args.seed)  # the same initial weights as toughen's run (it seeds the same way)
    model = build_model("small_cnn", splits.input_shape, splits.num_classes, mean=splits.mean, std=splits.std)
    clf = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters(), lr=args.lr),
        input_shape=tuple(splits.input_shape), nb_classes=splits.num_classes, clip_values=splits.bounds,
        device_type="cpu",
    )
    trainer = AdversarialTrainerMadryPGD(
        clf, nb_epochs=args.epochs, batch_size=args.batch_size, eps=args.eps, eps_step=2.5 * args.eps / args.steps,
        max_iter=args.steps, num_random_init=1,
    )
    trainer.attack.set_params(batch_size=args.batch_size)
    x, y = splits.x_train.numpy(), splits.y_train.numpy()
    np.random.seed(args.seed)
    epoch_seconds = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):  # one epoch per call, to time each
        t = time.perf_counter()
        trainer.fit(x, y, nb_epochs=1)
        epoch_seconds.append(time.perf_counter() - t)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"model": model.eval(), "epoch_seconds": epoch_seconds, "val_seconds": [], "wall_seconds": wall,
            "cpu_seconds": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 0.1, not the demo's 0.3: at 0.3 from the first step (ART has no eps warm-up), small_cnn stays at
    # chance level (10% clean) for the first epochs, and two epochs would compare two untrained models.
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--eval-n", type=int, default=1000, help="test examples for the robust accuracy")
    ap.add_argument("--no-amp", action="store_true", help="skip toughen's bf16 + channels-last run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, PGD-2, 100 test examples")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.steps, args.eval_steps, args.eval_n = 1, 2, 2, 100
    import art  # noqa: F401  (fail early, before minutes of training, when the peer is missing)

    info = common.machine_info()
    print(common.machine_line(info), flush=True)
    splits = load_data("mnist5k", None, 0.1)
    x_test, y_test = splits.x_test[: args.eval_n], splits.y_test[: args.eval_n]

    runs: dict[str, dict[str, Any]] = {}
    # ART between the two toughen runs, so that a drift in machine speed does not favour one side.
    plan = [("toughen pgd fp32", lambda: run_toughen(args, None)), ("ART MadryPGD fp32", lambda: run_art(args, splits))]
    if not args.no_amp:
        plan.append(("toughen pgd bf16+CL", lambda: run_toughen(args, "bf16")))
    for name, fn in plan:
        r = fn()
        r.update(robust_accuracy(r.pop("model"), x_test, y_test, args.eps, args.eval_steps))
        r["seconds_per_epoch"] = float(np.median(r["epoch_seconds"]))
        runs[name] = r
        print(f"{name}: {r['seconds_per_epoch']:.1f} s/epoch, clean {100 * r['clean_accuracy']:.1f}%, "
              f"PGD-{args.eval_steps} {100 * r['robust_accuracy']:.1f}%", flush=True)

    info["load_average_1min_end"] = common.load_average()
    ours, theirs = runs["toughen pgd fp32"], runs["ART MadryPGD fp32"]
    result = {
        "machine": info,
        "settings": {k: getattr(args, k) for k in ("eps", "steps", "epochs", "batch_size", "lr", "seed", "eval_steps",
                                                   "eval_n")},
        "runs": runs,
        "goals": {
            "epoch_time_ratio_toughen_over_art": ours["seconds_per_epoch"] / theirs["seconds_per_epoch"],
            "robust_gap_points": 100 * (ours["robust_accuracy"] - theirs["robust_accuracy"]),
            "met": ours["seconds_per_epoch"] <= theirs["seconds_per_epoch"]
            and ours["robust_accuracy"] >= theirs["robust_accuracy"],
        },
    }
    path = common.write_json("art_training" if not args.quick else "art_training-quick", result)
    md = markdown(result)
    print("\n" + md + f"\n\nwrote {path}")
    if not args.no_doc and not args.quick:
        common.write_section("art-training", md)


def markdown(result: dict) -> str:
    s, runs, g = result["settings"], result["runs"], result["goals"]
    art_epoch = runs["ART MadryPGD fp32"]["seconds_per_epoch"]
    art_cpu = runs["ART MadryPGD fp32"]["cpu_seconds"]
    rows = [[name, f"{r['seconds_per_epoch']:.1f}", f"{r['seconds_per_epoch'] / art_epoch:.2f}x",
             f"{r['wall_seconds']:.1f}", f"{r['cpu_seconds']:.1f} ({r['cpu_seconds'] / art_cpu:.2f}x)",
             common.fmt_pct(r["clean_accuracy"]), common.fmt_pct(r["robust_accuracy"])]
            for name, r in runs.items()]
    verdict = "met" if g["met"] else "**missed**"
    return "\n".join([
        "## PGD adversarial training: toughen against ART (`benchmarks/bench_art_training.py`)", "",
        common.machine_line(result["machine"]), "",
        f"small_cnn on mnist5k (3,600 training images), eps {s['eps']:g} (L-inf), PGD-{s['steps']} with step "
        f"{2.5 * s['eps'] / s['steps']:.3g} and one random start, {s['epochs']} epoch{'s' if s['epochs'] != 1 else ''} of batch {s['batch_size']}, "
        f"Adam at a constant lr {s['lr']:g}, no eps warm-up, same initial weights, last epoch kept. Seconds per "
        "epoch: the median epoch's training pass. toughen also validates after each epoch: that is left out of "
        "s / epoch but counted in the wall and CPU columns, which cover each whole run (CPU time is the steadier "
        "measure on a loaded machine with one torch thread). "
        f"Accuracy: PGD-{s['eval_steps']} (toughen, fp32) on the first {s['eval_n']} test images. "
        "One run each, not repeated: differences of a few percent in time are within the machine's drift.", "",
        common.md_table(["trainer", "s / epoch", "vs ART", "wall s", "CPU s (vs ART)", "clean",
                         f"PGD-{s['eval_steps']} robust"], rows),
        "",
        f"Goal (toughen fp32 at least as fast per epoch as ART, robust accuracy no lower): {verdict} "
        f"(time ratio {g['epoch_time_ratio_toughen_over_art']:.2f}x, robust accuracy "
        f"{g['robust_gap_points']:+.1f} points).",
    ])


if __name__ == "__main__":
    main()
