"""Benchmark: PGD speed and strength, toughen against torchattacks, ART and a bare loop.

For each model (small_cnn on mnist5k; preact_resnet18 on CIFAR-shaped random inputs), norm
(L-inf, L2) and budget (PGD-10, PGD-50), every contender attacks the same batch with the same
model, one uniform random start in the eps-ball, step size 2.5 * eps / steps:

- ``bare fp32``: Madry's loop as a reader of the paper writes it, K forward and backward passes
  and nothing else. Its time is the floor for an fp32 attack on this machine.
- ``bare bf16+CL``: the same loop under bf16 autocast with a channels-last model: the floor for
  a mixed-precision attack.
- ``toughen fp32``: ``toughen.attacks.pgd`` with its defaults (keep_best: the worst iterate per
  example, one extra forward pass at the end).
- ``toughen fp32 last``: ``keep_best=False``, the last iterate, like the bare loop and the peers.
- ``toughen auto``: ``amp="auto"`` on the memory layout ``toughen.precision.choose_precision``
  picks for this model and batch: what ``toughen eval --suite`` and training run by default. The
  choice and its probe's timings are stored in each cell.
- ``toughen bf16+CL`` and ``toughen bf16+CL last``: ``amp="bf16"`` on a channels-last model
  (keep_best confirms each fooled example in fp32; "last" returns the last iterate unchecked).
- ``torchattacks``: ``torchattacks.PGD`` / ``PGDL2``.
- ``ART``: ``art.attacks.evasion.ProjectedGradientDescent`` on a ``PyTorchClassifier``
  (numpy in and out, as ART's API is).

The contenders run round-robin (see benchmarks/common.py), each repetition on the next batch
of the test split, so robust accuracy is measured on ``reps * n`` distinct examples; it is
always checked in fp32 on the original model, and every result is checked to lie in the
eps-ball and the [0, 1] box. Strength numbers come from the PGD-trained model given by --run.

    .venv/bin/python benchmarks/bench_attacks.py --run /work/demo_model/pgd
    .venv/bin/python benchmarks/bench_attacks.py --quick          # a smoke run, seconds

Writes benchmarks/results/attacks.json and the `attacks` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import toughen  # noqa: E402
from toughen.attacks import pgd  # noqa: E402
from toughen.data import load_data  # noqa: E402
from toughen.models import build_model  # noqa: E402
from toughen.precision import choose_precision  # noqa: E402
from toughen.runs import read_config  # noqa: E402

ALL_CONTENDERS = ("bare fp32", "toughen fp32", "toughen fp32 last", "toughen auto", "torchattacks", "ART",
                  "bare bf16+CL", "toughen bf16+CL", "toughen bf16+CL last")
EPS = {"mnist": {"linf": 0.3, "l2": 2.0}, "cifar": {"linf": 8 / 255, "l2": 0.5}}
# "auto is never slower than fp32": met when its median is within this of fp32's, the spread we
# see between two runs of identical code in one round-robin
AUTO_NOISE = 1.03


# ---------------------------------------------------------------- the floor: a bare PGD loop


def bare_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
             alpha: float, generator: torch.Generator, amp: bool = False) -> torch.Tensor:
    """PGD (Madry et al. 2018) with nothing but the K forward and backward passes and the
    projection: no input checks, no bookkeeping. Uniform random start in the ball."""
    view = (-1,) + (1,) * (x.dim() - 1)
    if norm == "linf":
        delta = (2 * torch.rand(x.shape, generator=generator) - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator)
        direction = direction / direction.flatten(1).norm(dim=1).view(view)
        radius = eps * torch.rand(len(x), generator=generator).pow(1 / x[0].numel())
        delta = direction * radius.view(view)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x + delta).float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        if norm == "linf":
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        else:
            delta = delta.detach() + alpha * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(view)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


# ---------------------------------------------------------------- contenders


def make_contenders(names: list[str], model: nn.Module, *, eps: float, norm: str, steps: int,
                    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                    input_shape: tuple[int, ...]) -> dict[str, Callable[[int], torch.Tensor]]:
    """name -> fn(rep) -> x_adv for the batch of repetition ``rep``."""
    alpha = 2.5 * eps / steps
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl = lambda x: x.contiguous(memory_format=torch.channels_last)  # noqa: E731
    gen = lambda rep: torch.Generator().manual_seed(1000 + rep)  # noqa: E731
    out: dict[str, Callable[[int], torch.Tensor]] = {}

    def toughen_pgd(m: nn.Module, amp: str | None, keep_best: bool, channels_last: bool):
        def run(rep: int) -> torch.Tensor:
            x, y = batches(rep)
            x = cl(x) if channels_last else x
            return pgd(m, x, y, eps=eps, norm=norm, steps=steps, step_size=alpha, amp=amp, keep_best=keep_best,
                       generator=gen(rep))
        return run

    def bare(m: nn.Module, amp: bool, channels_last: bool):
        def run(rep: int) -> torch.Tensor:
            x, y = batches(rep)
            x = cl(x) if channels_last else x
            return bare_pgd(m, x, y, eps=eps, norm=norm, steps=steps, alpha=alpha, generator=gen(rep), amp=amp)
        return run

    for name in names:
        if name == "bare fp32":
            out[name] = bare(model, False, False)
        elif name == "bare bf16+CL":
            out[name] = bare(model_cl, True, True)
        elif name == "toughen fp32":
            out[name] = toughen_pgd(model, None, True, False)
        elif name == "toughen fp32 last":
            out[name] = toughen_pgd(model, None, False, False)
        elif name == "toughen auto":
            choice = choose_precision(model, *batches(0))  # measured once per model and batch shape
            out[name] = toughen_pgd(model_cl if choice.channels_last else model, "auto", True, choice.channels_last)
        elif name == "toughen bf16+CL":
            out[name] = toughen_pgd(model_cl, "bf16", True, True)
        elif name == "toughen bf16+CL last":
            out[name] = toughen_pgd(model_cl, "bf16", False, True)
        elif name == "torchattacks":
            import torchattacks

            atk = (torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True) if norm == "linf"
                   else torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=True))

            def run_ta(rep: int, atk=atk) -> torch.Tensor:
                x, y = batches(rep)
                torch.manual_seed(1000 + rep)  # torchattacks draws its start from the global generator
                return atk(x, y)
            out[name] = run_ta
        elif name == "ART":
            from art.attacks.evasion import ProjectedGradientDescent
            from art.estimators.classification import PyTorchClassifier

            clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=input_shape,
                                    nb_classes=num_classes, clip_values=(0.0, 1.0), device_type="cpu")

            def run_art(rep: int, clf=clf) -> torch.Tensor:
                x, y = batches(rep)
                np.random.seed(1000 + rep)  # ART draws its start from numpy's global generator
                atk = ProjectedGradientDescent(clf, norm=np.inf if norm == "linf" else 2, eps=eps, eps_step=alpha,
                                               max_iter=steps, num_random_init=1, batch_size=len(x), verbose=False)
                return torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))
            out[name] = run_art
        else:
            raise SystemExit(f"unknown contender {name!r}; choose from: {', '.join(ALL_CONTENDERS)}")
    return out


# ---------------------------------------------------------------- one grid cell


def check_result(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> float:
    """How far x_adv lies outside the eps-ball or the [0, 1] box (0 when inside)."""
    d = (x_adv.float() - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return max(0.0, (size - eps).max().item(), -x_adv.min().item(), x_adv.max().item() - 1)


def run_cell(model: nn.Module, names: list[str], *, eps: float, norm: str, steps: int, reps: int,
             batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]], num_classes: int,
             input_shape: tuple[int, ...], strength: bool) -> dict[str, Any]:
    contenders = make_contenders(names, model, eps=eps, norm=norm, steps=steps, batches=batches,
                                 num_classes=num_classes, input_shape=input_shape)
    # Warm-up: 2-step attacks, so each contender's kernels and buffers exist before timing.
    warm = make_contenders(names, model, eps=eps, norm=norm, steps=2, batches=batches, num_classes=num_classes,
                           input_shape=input_shape)
    timed = common.round_robin(contenders, reps, warmup={k: (lambda f=f: f(0)) for k, f in warm.items()})
    cell: dict[str, Any] = {"eps": eps, "norm": norm, "steps": steps, "reps": reps, "contenders": {}}
    if "toughen auto" in names:
        cell["auto"] = choose_precision(model, *batches(0)).to_dict()  # the cached choice the contender ran
    for name, t in timed.items():
        robust = n = clean = 0
        outside = 0.0
        for rep, x_adv in enumerate(t.results):
            x, y = batches(rep)
            outside = max(outside, check_result(x, x_adv, eps, norm))
            with torch.no_grad():
                robust += (model(x_adv.float().contiguous()).argmax(1) == y).sum().item()
                clean += (model(x).argmax(1) == y).sum().item()
            n += len(y)
        cell["contenders"][name] = {
            "seconds": t.seconds, "median": t.median, "spread": t.spread, "n": n,
            "cpu_seconds": t.cpu_seconds, "cpu_median": t.cpu_median,
            "robust_accuracy": robust / n if strength else None, "clean_accuracy": clean / n if strength else None,
            "outside_threat_model": outside,
        }
    return cell


# ---------------------------------------------------------------- main


def mnist_setup(run: str, n: int):
    cfg = read_config(run)
    train = cfg["train"]
    model = toughen.load(run)
    splits = load_data(train["data"], train["data_dir"], train["val_size"])
    xt, yt = splits.x_test, splits.y_test
    per = len(xt) // n

    def batches(rep: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = rep % per
        return xt[i * n:(i + 1) * n], yt[i * n:(i + 1) * n]
    return model, batches, splits.num_classes, tuple(splits.input_shape), f"{train['model']} ({run}) on {train['data']}"


def cifar_setup(n: int):
    torch.manual_seed(0)
    model = build_model("preact_resnet18", (3, 32, 32), 10).eval()
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def batches(rep: int) -> tuple[torch.Tensor, torch.Tensor]:
        if rep not in cache:  # random images, labelled with the model's own prediction (100% clean)
            x = torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(rep))
            with torch.no_grad():
                cache[rep] = (x, model(x).argmax(1))
        return cache[rep]
    return model, batches, 10, (3, 32, 32), "preact_resnet18 (random weights) on random 3x32x32 inputs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="/work/demo_model/pgd", help="run directory of the PGD-trained mnist model")
    ap.add_argument("--n", type=int, default=200, help="mnist batch size (one batch per repetition)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per contender (PGD-10)")
    ap.add_argument("--reps-long", type=int, default=2, help="timed repetitions per contender for PGD-50")
    ap.add_argument("--steps", default="10,50")
    ap.add_argument("--norms", default="linf,l2")
    ap.add_argument("--cifar-n", type=int, default=4, help="preact_resnet18 batch size (0: skip)")
    ap.add_argument("--cifar-reps", type=int, default=3)
    ap.add_argument("--cifar-steps", default="10", help="budgets for preact_resnet18 (PGD-50 costs 5x PGD-10)")
    ap.add_argument("--contenders", default=",".join(ALL_CONTENDERS))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny batches, 1 repetition, PGD-2/PGD-3")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--render", default=None, metavar="JSON", help="only rewrite the doc section from a result file")
    ap.add_argument("--profile", default=None, metavar="CONTENDERS",
                    help="instead of benchmarking: profile these contenders (comma-separated) on one mnist "
                         "L-inf PGD-10 batch and print where the time goes, operator by operator")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile(args.run, args.n, [c.strip() for c in args.profile.split(",")])
        return
    if args.render:  # tables again from a saved result, e.g. after changing this formatting
        results = json.loads(Path(args.render).read_text())
        names = [n for n in ALL_CONTENDERS if n in next(iter(results["models"].values()))["cells"][0]["contenders"]]
        results["goals"] = goals(results)
        md = markdown(results, names)
        print(md)
        if not args.no_doc:
            cap = results["machine"].get("isa_cap")
            common.write_section("attacks" + (f"-{cap}" if cap else ""), md)
        return
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    steps = [int(s) for s in args.steps.split(",")]
    cifar_steps = [int(s) for s in args.cifar_steps.split(",") if s]
    norms = args.norms.split(",")
    if args.quick:
        args.n, args.reps, args.reps_long, args.cifar_n, args.cifar_reps = 20, 1, 1, 2, 1
        steps, cifar_steps = [2, 3], [2]
    info = common.machine_info()
    print(common.machine_line(info), flush=True)

    results: dict[str, Any] = {"machine": info, "models": {}}
    plans = [("mnist", steps, args.reps)]
    if args.cifar_n > 0 and cifar_steps:
        plans.append(("cifar", cifar_steps, args.cifar_reps))
    for data, budgets, reps in plans:
        if data == "mnist":
            model, batches, k, shape, label = mnist_setup(args.run, args.n)
            n = args.n
        else:
            model, batches, k, shape, label = cifar_setup(args.cifar_n)
            n = args.cifar_n
        cells = []
        for norm in norms:
            for s in budgets:
                r = reps if s <= 10 else args.reps_long
                cell = run_cell(model, names, eps=EPS[data][norm], norm=norm, steps=s, reps=r, batches=batches,
                                num_classes=k, input_shape=shape, strength=data == "mnist")
                cells.append(cell)
                line = ", ".join(f"{c} {v['median']:.2f}s" for c, v in cell["contenders"].items())
                print(f"[{data} {norm} PGD-{s}] {line}", flush=True)
        results["models"][data] = {"label": label, "n": n, "cells": cells}
    info["load_average_1min_end"] = common.load_average()
    results["goals"] = goals(results)
    # A run under ONEDNN_MAX_CPU_ISA stands for another CPU: its own JSON and docs section
    key = "attacks" + (f"-{info['isa_cap']}" if info.get("isa_cap") else "")
    path = common.write_json(key if not args.quick else f"{key}-quick", results)
    md = markdown(results, names)
    print("\n" + md)
    print(f"\nwrote {path}")
    if not args.no_doc and not args.quick:
        common.write_section(key, md)


def profile(run: str, n: int, names: list[str], steps: int = 10, reps: int = 3) -> None:
    """torch.profiler tables, one per contender: which operators the time goes to."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, batches, k, shape, _ = mnist_setup(run, n)
    fns = make_contenders(names, model, eps=0.3, norm="linf", steps=steps, batches=batches, num_classes=k,
                          input_shape=shape)
    for name, fn in fns.items():
        fn(0)  # warm-up
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for rep in range(reps):
                fn(rep)
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3 / reps
        print(f"\n=== {name}: {total:.0f} ms of operator self time per attack (PGD-{steps}, batch {n})")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


# ---------------------------------------------------------------- reporting


def _cells(results: dict, data: str) -> list[dict]:
    return results["models"].get(data, {}).get("cells", [])


def goals(results: dict) -> list[dict]:
    """The issue's two attack goals, per cell: toughen fp32 within 5% of the bare fp32 loop;
    toughen bf16 at least 2x torchattacks, robust accuracy within 0.5 points of fp32.

    The verdict uses wall time, except when torch ran one thread: then this process's CPU time
    is the measure of work that other processes on the machine cannot inflate."""
    by_cpu = results["machine"].get("torch_threads") == 1
    rows = []
    for data in results["models"]:
        for cell in _cells(results, data):
            c = cell["contenders"]
            where = f"{data} {cell['norm']} PGD-{cell['steps']}"
            for ours in ("toughen fp32", "toughen fp32 last"):
                if ours in c and "bare fp32" in c:
                    ratio = c[ours]["median"] / c["bare fp32"]["median"]
                    cpu_ratio = c[ours]["cpu_median"] / c["bare fp32"]["cpu_median"]
                    ra, rb = c[ours]["robust_accuracy"], c["bare fp32"]["robust_accuracy"]
                    gap = None if ra is None else 100 * (ra - rb)
                    rows.append({"goal": f"{ours} / bare fp32 <= 1.05", "where": where, "value": ratio,
                                 "cpu_value": cpu_ratio,
                                 "met": (cpu_ratio if by_cpu else ratio) <= 1.05 and (gap is None or abs(gap) <= 0.5 + 1e-9),
                                 "robust_gap_points": gap})
            if "toughen auto" in c and "toughen fp32" in c:
                ratio = c["toughen auto"]["median"] / c["toughen fp32"]["median"]
                cpu_ratio = c["toughen auto"]["cpu_median"] / c["toughen fp32"]["cpu_median"]
                choice = cell.get("auto", {}).get("label")
                # Where auto picks fp32 itself, the two contenders run the same code and the ratio
                # is the spread of identical runs: the verdict says so rather than met or missed.
                met = "same code" if choice == "fp32" else (cpu_ratio if by_cpu else ratio) <= AUTO_NOISE
                rows.append({"goal": f"toughen auto / toughen fp32 <= {AUTO_NOISE}", "where": where, "value": ratio,
                             "cpu_value": cpu_ratio, "met": met, "robust_gap_points": None, "auto": choice})
            for ours in ("toughen bf16+CL", "toughen bf16+CL last"):
                ref = "toughen fp32" if ours == "toughen bf16+CL" else "toughen fp32 last"
                if ours in c and "torchattacks" in c:
                    speedup = c["torchattacks"]["median"] / c[ours]["median"]
                    cpu_speedup = c["torchattacks"]["cpu_median"] / c[ours]["cpu_median"]
                    gap = None
                    if ref in c and c[ours]["robust_accuracy"] is not None:
                        gap = 100 * (c[ours]["robust_accuracy"] - c[ref]["robust_accuracy"])
                    rows.append({"goal": f"torchattacks / {ours} >= 2", "where": where, "value": speedup,
                                 "cpu_value": cpu_speedup,
                                 "met": (cpu_speedup if by_cpu else speedup) >= 2 and (gap is None or abs(gap) <= 0.5 + 1e-9),
                                 "robust_gap_points": gap})
    return rows


def markdown(results: dict, names: list[str]) -> str:
    cap = results["machine"].get("isa_cap")
    parts = ["## Attack speed and strength (`benchmarks/bench_attacks.py`)"
             + (f", oneDNN capped at {cap}" if cap else ""), "",
             common.machine_line(results["machine"]), "",
             "Same model, same batch and one uniform random start in the eps-ball for every contender; "
             "step size 2.5 eps / steps; contenders alternate round-robin. Each cell: median seconds of the "
             "repetitions, and in brackets its ratio to the bare fp32 loop (lower is faster), in wall time and in this "
             "process's CPU time (the CPU-time ratio is the steadier one when other processes load the machine and "
             "torch runs one thread). `last` = "
             "`keep_best=False` (the last iterate, as the bare loop and the peers return); `bf16+CL` = "
             "`amp=\"bf16\"` on a channels-last model; `auto` = `amp=\"auto\"` on the layout "
             "`choose_precision` picks (its choice is named in the goals table)."]
    for data, entry in results["models"].items():
        cells = entry["cells"]
        head = ["contender"] + [f"{c['norm']} eps={c['eps']:.3g} PGD-{c['steps']}" for c in cells]
        rows = []
        for name in names:
            row = [name]
            for c in cells:
                v, b = c["contenders"][name], c["contenders"].get("bare fp32")
                row.append(f"{v['median']:.2f} s ({v['median'] / b['median']:.2f}x; CPU {v['cpu_median'] / b['cpu_median']:.2f}x)"
                           if b else f"{v['median']:.2f} s")
            rows.append(row)
        reps = sorted({c["reps"] for c in cells})
        parts += ["", f"### Speed: {entry['label']}, batch {entry['n']}, "
                      f"{'/'.join(map(str, reps))} repetitions", "", common.md_table(head, rows)]
        if cells and cells[0]["contenders"][names[0]]["robust_accuracy"] is not None:
            n = cells[0]["contenders"][names[0]]["n"]
            clean = cells[0]["contenders"][names[0]]["clean_accuracy"]
            srows = []
            for name in names:
                srows.append([name] + [common.fmt_pct(c["contenders"][name]["robust_accuracy"]) for c in cells])
            parts += ["", f"### Strength: robust accuracy on the same {n} test examples "
                          f"(clean accuracy {common.fmt_pct(clean)}; lower = stronger attack)", "",
                      common.md_table(head, srows)]
        bad = [(name, c["norm"], c["steps"]) for c in cells for name in names
               if c["contenders"][name]["outside_threat_model"] > 1e-5]
        if bad:
            parts += ["", "Results outside the eps-ball or the box: " + ", ".join(f"{a} ({b} PGD-{s})"
                                                                              for a, b, s in bad)]
    g = results.get("goals", [])
    if g:
        grows = [[r["goal"] + (f" (auto: {r['auto']})" if r.get("auto") else ""), r["where"], f"{r['value']:.2f}x", f"{r['cpu_value']:.2f}x",
                  "n/a" if r["robust_gap_points"] is None else f"{r['robust_gap_points']:+.1f}",
                  r["met"] if isinstance(r["met"], str) else "met" if r["met"] else "**missed**"] for r in g]
        measure = "CPU time (torch ran one thread)" if results["machine"].get("torch_threads") == 1 else "wall time"
        parts += ["", "### Goals", "",
                  f"Verdicts use {measure}; the robust-accuracy gap is against the bare fp32 loop (first goal) or "
                  "toughen's fp32 attack of the same kind (second goal), on the same examples and random starts, "
                  "and must be within 0.5 points.", "", common.md_table(
            ["goal", "where", "ratio (wall)", "ratio (CPU time)", "robust acc. gap (points)", ""], grows,
            right={2, 3, 4})]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
