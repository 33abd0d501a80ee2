"""Benchmark: what adversarial training costs, and what toughen's attack loop adds to it.

1. Cost multiplier: seconds per training step of the ``pgd`` recipe with K steps over seconds
   per step of the ``standard`` recipe, same model, same batches, next to the theoretical
   K + 1 (K attack forward+backward passes, one training pass) and to toughen's own pass count
   (toughen.train.cost.PassCounter). A backward pass of an attack computes the input gradient
   only, so the measured ratio is usually a little below K + 1.
2. Attack-loop overhead: ``toughen.attacks.pgd`` (random start, K steps, last iterate, the
   training configuration) against a bare PGD loop written out here in a dozen lines
   (fast_adversarial's ``attack_pgd`` without restarts), same model, batch, K and step size;
   goal: within 5%. Also toughen's default (``keep_best=True``: one more forward pass per
   example to keep the worst iterate) for what that choice costs.

Timings alternate between the contenders, repeat, and report the median, so a change of load
during the run hits both alike. Run it on an idle machine: the script records the 1-minute load
average beside the numbers.

    .venv/bin/python benchmarks/bench_cost.py                            # small_cnn on MNIST-sized data
    .venv/bin/python benchmarks/bench_cost.py --model preact_resnet18 --shape 3 32 32 --batch 128
    .venv/bin/python benchmarks/bench_cost.py --device cuda --model preact_resnet18 --shape 3 32 32 --amp bf16

Not a test. Writes benchmarks/results/cost.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from toughen.attacks import pgd
from toughen.models import build_model
from toughen.train.cost import PassCounter
from toughen.train.recipes import RECIPES, RecipeContext


def bare_pgd(model, x, y, eps: float, alpha: float, steps: int, generator: torch.Generator) -> torch.Tensor:
    """The reference: L-inf PGD from a uniform random start, last iterate, no bookkeeping."""
    delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, interleaved over ``repeats`` rounds after a warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 3, 7, 10], help="values of K")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast for every contender")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cost.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, tuple(args.shape), 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(args.batch, *args.shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)) \
        if args.amp else None

    def train_step(recipe: str, steps: int) -> Callable[[], None]:
        ctx = RecipeContext(eps=args.eps, steps=steps, step_size=2.5 * args.eps / steps,
                            generator=torch.Generator(device=device).manual_seed(0))

        def run() -> None:
            model.train()
            if autocast is not None:
                with autocast():
                    loss = RECIPES.get(recipe)(model, x, y, ctx).loss
            else:
                loss = RECIPES.get(recipe)(model, x, y, ctx).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    # 1. cost multiplier of pgd-K training against standard training
    cost_rows = []
    for k in args.steps:
        t = timed({"standard": train_step("standard", 1), "pgd": train_step("pgd", k)}, args.repeats, device)
        with PassCounter(model) as count:
            train_step("pgd", k)()
        passes = (count.forward + count.backward) / (2 * args.batch)
        cost_rows.append({"K": k, "standard_s": t["standard"], "pgd_s": t["pgd"],
                          "measured": t["pgd"] / t["standard"], "theory": k + 1, "pass_count": passes})

    # 2. overhead of toughen's pgd over the bare loop (the model in eval mode, as in evaluation)
    model.eval()
    overhead_rows = []
    for k in args.steps:
        alpha = 2.5 * args.eps / k

        def ours(keep_best: bool) -> Callable[[], None]:
            gen = torch.Generator(device=device).manual_seed(0)
            return lambda: pgd(model, x, y, eps=args.eps, steps=k, step_size=alpha, keep_best=keep_best,
                               amp=args.amp, generator=gen)

        gen_bare = torch.Generator(device=device).manual_seed(0)

        def bare() -> None:
            if autocast is not None:
                with autocast():
                    bare_pgd(model, x, y, args.eps, alpha, k, gen_bare)
            else:
                bare_pgd(model, x, y, args.eps, alpha, k, gen_bare)

        t = timed({"bare": bare, "toughen": ours(False), "toughen_keep_best": ours(True)}, args.repeats, device)
        overhead_rows.append({"K": k, "bare_s": t["bare"], "toughen_s": t["toughen"],
                              "overhead": t["toughen"] / t["bare"] - 1,
                              "toughen_keep_best_s": t["toughen_keep_best"],
                              "keep_best_overhead": t["toughen_keep_best"] / t["bare"] - 1})

    result = {
        "model": args.model, "shape": args.shape, "batch": args.batch, "eps": args.eps, "amp": args.amp,
        "device": str(device), "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "cost": cost_rows, "attack_overhead": overhead_rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"{args.model} {tuple(args.shape)}, batch {args.batch}, {device}, amp {args.amp}, "
          f"{args.threads} thread(s), load {result['load_average_1min']:.1f}\n")
    print("| K | standard step (s) | pgd-K step (s) | measured multiplier | theory K+1 | pass count |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in cost_rows:
        print(f"| {r['K']} | {r['standard_s']:.4f} | {r['pgd_s']:.4f} | {r['measured']:.2f} | {r['theory']} "
              f"| {r['pass_count']:.0f} |")
    print("\n| K | bare PGD (s) | toughen pgd (s) | overhead | toughen keep_best=True (s) | overhead |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in overhead_rows:
        print(f"| {r['K']} | {r['bare_s']:.4f} | {r['toughen_s']:.4f} | {100 * r['overhead']:+.1f}% "
              f"| {r['toughen_keep_best_s']:.4f} | {100 * r['keep_best_overhead']:+.1f}% |")


if __name__ == "__main__":
    main()
