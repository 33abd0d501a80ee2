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
    .venv/bin/python benchmarks/bench_art_training.py --seeds 0 1 2 3 4 --no-amp --art-draws  # the gap over seeds

One seed is one pair (the same initial weights; different data orders and random starts), and the
robust accuracy of one pair moves by points from seed to seed. ``--seeds`` runs several pairs side by
side and reports the paired gap's mean, standard error, a paired t-test and a sign test, in
benchmarks/results/art_training_seeds.json; ``--art-draws`` adds a third run per seed, toughen's
attack with ART's own random draws, which shows how much of a seed's gap is its draws.

A single seed writes benchmarks/results/art_training.json and the `art-training` section of docs/benchmarks.md.
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


def run_toughen(args, amp: str | None, seed: int) -> dict[str, Any]:
    cfg = TrainConfig(
        data="mnist5k", model="small_cnn", recipe="pgd", eps=args.eps, norm="linf", steps=args.steps,
        epochs=args.epochs, batch_size=args.batch_size, optimizer="adam", lr=args.lr, lr_schedule="constant",
        eps_warmup=0.0, seed=seed, eval_steps=0, select="last", amp=amp, channels_last=amp is not None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        train(cfg, Path(tmp) / "run", progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        model = load(Path(tmp) / "run")
    return {"model": model, "epoch_seconds": [r["seconds"] for r in rows],
            "val_seconds": [r["val_seconds"] for r in rows], "wall_seconds": wall, "cpu_seconds": cpu}


def run_art(args, splits, seed: int) -> dict[str, Any]:
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(seed)  # the same initial weights as toughen's run (it seeds the same way)
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
    np.random.seed(seed)  # ART draws the data order and the random starts from numpy's global generator
    epoch_seconds = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):  # one epoch per call, to time each
        t = time.perf_counter()
        trainer.fit(x, y, nb_epochs=1)
        epoch_seconds.append(time.perf_counter() - t)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"model": model.eval(), "epoch_seconds": epoch_seconds, "val_seconds": [], "wall_seconds": wall,
            "cpu_seconds": cpu}


# The name of the --art-draws run: toughen's training attack with every random draw taken as ART takes it.
ART_DRAWS = "toughen pgd, ART's draws"


def run_toughen_art_draws(args, splits, seed: int) -> dict[str, Any]:
    """toughen's training attack (``RecipeContext.attack``, what the `pgd` recipe calls) in Madry's
    loop with every random draw taken as run_art's ART trainer takes it at ``seed``.

    The two trainers differ only in where their randomness comes from (toughen: a torch generator
    for the data order and another for the random starts; ART: numpy's global generator for both),
    so a gap between them at one seed says nothing until this run shows where it comes from: if it
    lands on ART's numbers, the gap at that seed is the draws, not the algorithm.

    ART's AdversarialTrainer, per epoch (one fit call): a numpy shuffle of the indices; per batch
    (the last, partial one included): a numpy shuffle of the batch's rows, which it attacks in that
    order; PGD's numpy uniform start in [-eps, eps], clipped to the bounds; the adversarial rows put
    back in place; one optimizer step on the batch, in the order of a shuffling DataLoader. Its PGD
    and its success log iterate three DataLoaders and its fit one, each drawing from torch's global
    generator: the same DataLoaders are iterated here, so the last one shuffles the batch alike.
    The draws are then ART's exactly (checked against ART's own, batch by batch); the arithmetic is
    not bit for bit (ART clips x + start where toughen adds a clamped delta to x, and differentiates
    the batch's mean loss where toughen sums it), and those last-bit differences grow over training.
    """
    from unittest import mock

    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from toughen import threat
    from toughen.train.recipes import RecipeContext

    torch.manual_seed(seed)  # the initial weights of both other runs
    model = build_model("small_cnn", splits.input_shape, splits.num_classes, mean=splits.mean, std=splits.std)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    ctx = RecipeContext(eps=args.eps, norm="linf", steps=args.steps, step_size=2.5 * args.eps / args.steps,
                        bounds=splits.bounds)
    x, y = splits.x_train.numpy(), splits.y_train.numpy()
    np.random.seed(seed)
    bs = args.batch_size
    epoch_seconds = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        t = time.perf_counter()
        ind = np.arange(len(x))  # run_art calls fit once per epoch, and each call starts from arange
        np.random.shuffle(ind)
        for b in range(-(-len(x) // bs)):
            rows = ind[b * bs : (b + 1) * bs]
            adv_ids = np.arange(len(rows))
            np.random.shuffle(adv_ids)
            xb, yb = torch.from_numpy(x[rows][adv_ids]), torch.from_numpy(y[rows][adv_ids])
            noise = np.random.uniform(-args.eps, args.eps, (len(xb), xb[0].numel())).astype(np.float32)
            start = torch.from_numpy(noise).reshape(xb.shape)
            for _ in range(3):  # PGD's batches, then compute_success's predict on x_adv and on x
                for _ in DataLoader(TensorDataset(xb), batch_size=bs):
                    pass
            model.eval()  # ART attacks in eval mode (small_cnn has no dropout or BatchNorm: no difference)
            with mock.patch.object(threat, "random_start", lambda x, *a, **k: threat.clamp_to_bounds(x, start, ctx.bounds)):
                x_adv = ctx.attack(model, xb, yb)
            x_batch = torch.from_numpy(x[rows])  # a copy: fancy indexing
            x_batch[torch.from_numpy(adv_ids)] = x_adv
            model.train()
            for xs, ys in DataLoader(TensorDataset(x_batch, torch.from_numpy(y[rows])), batch_size=len(rows),
                                     shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(xs), ys).backward()
                optimizer.step()
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
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="several seeds side by side, with the paired gap's statistics (writes art_training_seeds.json, "
                         "not the doc section)")
    ap.add_argument("--art-draws", action="store_true",
                    help=f"with --seeds, also train {ART_DRAWS!r} (toughen's attack with ART's random draws) per seed")
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
    if args.seeds:
        run_seeds(args, splits, x_test, y_test, info)
        return

    runs: dict[str, dict[str, Any]] = {}
    # ART between the two toughen runs, so that a drift in machine speed does not favour one side.
    plan = [("toughen pgd fp32", lambda: run_toughen(args, None, args.seed)),
            ("ART MadryPGD fp32", lambda: run_art(args, splits, args.seed))]
    if not args.no_amp:
        plan.append(("toughen pgd bf16+CL", lambda: run_toughen(args, "bf16", args.seed)))
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


# ---------------------------------------------------------------- several seeds

def run_seeds(args, splits, x_test, y_test, info: dict) -> None:
    """toughen pgd and ART MadryPGD at each of ``args.seeds``: is toughen's robust accuracy lower
    than ART's by more than the spread between seeds? One seed gives the same initial weights to
    both (a pair) but different data orders and random starts, and a single pair moves by points."""
    if len(args.seeds) < 2:
        raise SystemExit("--seeds needs at least two seeds (the statistics of one pair are undefined)")
    plan = {
        "toughen pgd fp32": lambda seed: run_toughen(args, None, seed),
        "ART MadryPGD fp32": lambda seed: run_art(args, splits, seed),
        ART_DRAWS: lambda seed: run_toughen_art_draws(args, splits, seed),
        "toughen pgd bf16+CL": lambda seed: run_toughen(args, "bf16", seed),
    }
    per_seed = []
    for i, seed in enumerate(args.seeds):
        # Who goes first alternates from seed to seed, so that a drift in the machine's speed favours
        # neither side's times (accuracy does not depend on the order: each run seeds itself).
        order = ["toughen pgd fp32", "ART MadryPGD fp32"][:: 1 if i % 2 == 0 else -1]
        order += [ART_DRAWS] * args.art_draws + ["toughen pgd bf16+CL"] * (not args.no_amp)
        runs = {}
        for name in order:
            r = plan[name](seed)
            r.update(robust_accuracy(r.pop("model"), x_test, y_test, args.eps, args.eval_steps))
            r["seconds_per_epoch"] = float(np.median(r["epoch_seconds"]))
            runs[name] = r
            print(f"seed {seed} {name}: {r['seconds_per_epoch']:.1f} s/epoch, clean {100 * r['clean_accuracy']:.1f}%, "
                  f"PGD-{args.eval_steps} {100 * r['robust_accuracy']:.1f}%", flush=True)
        ours, theirs = runs["toughen pgd fp32"], runs["ART MadryPGD fp32"]
        per_seed.append({
            "seed": seed, "order": order, "runs": runs,
            "robust_gap_points": 100 * (ours["robust_accuracy"] - theirs["robust_accuracy"]),
            "clean_gap_points": 100 * (ours["clean_accuracy"] - theirs["clean_accuracy"]),
            "epoch_time_ratio_toughen_over_art": ours["seconds_per_epoch"] / theirs["seconds_per_epoch"],
        })
        # Written after every seed: a run stopped early (a busy machine) keeps the seeds it finished.
        info["load_average_1min_end"] = common.load_average()
        result = seeds_result(args, info, per_seed)
        path = common.write_json("art_training_seeds" if not args.quick else "art_training_seeds-quick", result)
    print("\n" + seeds_markdown(result) + f"\n\nwrote {path}")


def seeds_result(args, info: dict, per_seed: list[dict]) -> dict[str, Any]:
    """The JSON of a --seeds run: settings, every seed's runs, and (from two seeds on) the statistics."""
    result = {
        "machine": info,
        "settings": {k: getattr(args, k) for k in ("eps", "steps", "epochs", "batch_size", "lr", "seeds",
                                                   "eval_steps", "eval_n", "art_draws")},
        "seeds_done": [s["seed"] for s in per_seed],
        "per_seed": per_seed,
    }
    if len(per_seed) < 2:
        return result
    result["robust_gap"] = paired_stats([s["robust_gap_points"] for s in per_seed])
    result["clean_gap"] = paired_stats([s["clean_gap_points"] for s in per_seed])
    result["robust_by_trainer"] = {name: spread([100 * s["runs"][name]["robust_accuracy"] for s in per_seed])
                                   for name in per_seed[0]["runs"]}
    if args.art_draws:  # the same draws as ART, toughen's attack: what is left of the gap is float rounding
        result["robust_gap_art_draws_minus_art"] = paired_stats(
            [100 * (s["runs"][ART_DRAWS]["robust_accuracy"] - s["runs"]["ART MadryPGD fp32"]["robust_accuracy"])
             for s in per_seed])
    return result


def spread(values: list[float]) -> dict[str, float]:
    """Mean and standard deviation (n - 1) of one trainer's numbers over seeds."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1))}


def paired_stats(diffs: list[float]) -> dict[str, Any]:
    """The paired differences (one per seed): mean, standard error, 95% t interval, a paired t-test
    (the mean difference is 0) and a sign test (each seed is as likely to favour either side), which
    needs no normality and ignores how large each difference is. Ties (0.0) drop out of the sign test."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    n = len(d)
    se = float(d.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.975, n - 1) * se)
    t = stats.ttest_1samp(d, 0.0)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    sign_p = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    return {"n": n, "diffs": d.tolist(), "mean": float(d.mean()), "sd": float(d.std(ddof=1)), "se": se,
            "ci95": [float(d.mean()) - half, float(d.mean()) + half], "t": float(t.statistic),
            "t_test_p": float(t.pvalue), "positive": wins, "negative": losses, "sign_test_p": sign_p}


def seeds_markdown(result: dict) -> str:
    """The per-seed table and the gap's statistics, for the prose after the art-training section."""
    names = list(result["per_seed"][0]["runs"])
    rows = [[s["seed"], *(common.fmt_pct(s["runs"][n]["robust_accuracy"]) for n in names),
             f"{s['robust_gap_points']:+.1f}", f"{s['clean_gap_points']:+.1f}",
             f"{s['epoch_time_ratio_toughen_over_art']:.2f}x"] for s in result["per_seed"]]
    g = result["robust_gap"]
    lines = [
        common.md_table(["seed", *(f"{n} robust" for n in names), "robust gap", "clean gap", "time ratio"], rows), "",
        f"Robust gap, toughen minus ART, over {g['n']} seeds: mean {g['mean']:+.2f} points, sd {g['sd']:.2f}, "
        f"standard error {g['se']:.2f}, 95% interval [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}]; paired t-test "
        f"p = {g['t_test_p']:.2f}; sign test {g['positive']} seeds for toughen, {g['negative']} for ART, "
        f"p = {g['sign_test_p']:.2f}.",
    ]
    for name, v in result["robust_by_trainer"].items():
        lines.append(f"{name}: robust {v['mean']:.1f}% mean, sd {v['sd']:.1f} points over seeds.")
    if "robust_gap_art_draws_minus_art" in result:
        a = result["robust_gap_art_draws_minus_art"]
        lines.append(f"{ART_DRAWS} minus ART: mean {a['mean']:+.2f} points, sd {a['sd']:.2f}, "
                     f"95% interval [{a['ci95'][0]:+.2f}, {a['ci95'][1]:+.2f}].")
    return "\n".join(lines)


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
