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

Timings run round-robin (benchmarks/common.py) and report the median, so a change of load
during the run hits every contender alike. Run it on an idle machine: the machine, versions and
1-minute load average are stored beside the numbers. (benchmarks/bench_attacks.py compares the
attack alone with torchattacks and ART as well.)

    .venv/bin/python benchmarks/bench_cost.py                            # small_cnn on MNIST-sized data
    .venv/bin/python benchmarks/bench_cost.py --model preact_resnet18 --shape 3 32 32 --batch 128
    .venv/bin/python benchmarks/bench_cost.py --device cuda --model preact_resnet18 --shape 3 32 32 --amp bf16

Not a test. Writes benchmarks/results/cost.json and the `cost` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from toughen.attacks import pgd  # noqa: E402
from toughen.models import build_model  # noqa: E402
from toughen.train.cost import PassCounter  # noqa: E402
from toughen.train.recipes import RECIPES, RecipeContext  # noqa: E402


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


def timed(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, round-robin over ``repeats`` rounds after a warm-up
    (on a GPU, synchronized so that each time covers the work, not only its launch)."""
    def synced(fn: Callable[[], None]) -> Callable[[int], None]:
        def run(_rep: int) -> None:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return run

    result = common.round_robin({n: synced(f) for n, f in fns.items()}, repeats,
                                warmup={n: (lambda f=f: synced(f)(0)) for n, f in fns.items()})
    return {name: t.median for name, t in result.items()}


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
    ap.add_argument("--smoke", action="store_true", help="print only; write neither results nor docs")
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

    info = common.machine_info()
    info["load_average_1min_end"] = common.load_average()
    result = {"model": args.model, "shape": args.shape, "batch": args.batch, "eps": args.eps, "amp": args.amp,
              "device": str(device), "repeats": args.repeats, "machine": info,
              "cost": cost_rows, "attack_overhead": overhead_rows}
    if not args.smoke:
        common.write_json("cost", result)
    cost_table = common.md_table(
        ["K", "standard step (s)", "pgd-K step (s)", "measured multiplier", "theory K+1", "pass count"],
        [[r["K"], f"{r['standard_s']:.4f}", f"{r['pgd_s']:.4f}", f"{r['measured']:.2f}", r["theory"],
          f"{r['pass_count']:.0f}"] for r in cost_rows])
    overhead_table = common.md_table(
        ["K", "bare PGD (s)", "toughen pgd, last iterate (s)", "overhead", "toughen keep_best (s)", "overhead"],
        [[r["K"], f"{r['bare_s']:.4f}", f"{r['toughen_s']:.4f}", f"{100 * r['overhead']:+.1f}%",
          f"{r['toughen_keep_best_s']:.4f}", f"{100 * r['keep_best_overhead']:+.1f}%"] for r in overhead_rows])
    markdown = (
        f"## Cost of adversarial training, and of toughen's attack loop\n\n"
        f"{args.model} on {tuple(args.shape)} inputs, batch {args.batch}, {device}, amp {args.amp}; "
        f"median of {args.repeats} round-robin repetitions.\n\n"
        f"Seconds per training step, `pgd` recipe with K steps against `standard`:\n\n{cost_table}\n\n"
        f"toughen's `pgd` (eval mode) against a bare PGD loop, same model, batch, K and step size "
        f"(goal: within 5%):\n\n{overhead_table}\n\n{common.machine_line(info)}\n"
    )
    if not args.smoke:
        common.write_section("cost", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
