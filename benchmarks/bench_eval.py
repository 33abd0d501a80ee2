"""Benchmark: toughen's `standard` suite against torchattacks' and ART's AutoAttack.

Same model, same examples, same machine, one process, one CPU thread: robust accuracy side by
side, the examples each one fooled that the other missed, and the time ratio. Contenders:

- ``toughen standard``: ``toughen.evaluate(suite="standard")`` in fp32: APGD-CE (100 steps),
  APGD-T (DLR, 9 targets x 100 steps), Square (5,000 queries), AutoAttack's standard budgets.
- ``toughen standard bf16``: the same suite with ``amp="bf16"`` on a channels-last model; every
  fooling input is confirmed in fp32, so robust accuracy is not understated by rounding.
- ``torchattacks AutoAttack``: ``torchattacks.AutoAttack(version="standard")`` (APGD, APGD-T,
  FAB-T, Square 5,000; torchattacks' APGD defaults to 10 steps, not AutoAttack's 100).
- ``ART AutoAttack``: ``art.attacks.evasion.AutoAttack`` given AutoAttack's standard budgets
  (APGD-CE and APGD-DLR, 100 iterations, 1 restart; Square 5,000 queries, 1 restart; ART's
  default list has 5 restarts each and DeepFool, several times the cost). ART's APGD-T over 9
  targets is not offered in its AutoAttack without targeting every class, so APGD-DLR stands in.

Also PGD-20 alone and the `quick` suite, to check the ordering standard <= quick <= PGD-20.

    .venv/bin/python benchmarks/bench_eval.py --run runs/demo/pgd --n 200

Not a test: it takes minutes. Writes benchmarks/results/eval.json and the `eval` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import toughen  # noqa: E402
from toughen.attacks import Attack  # noqa: E402
from toughen.data import load_data  # noqa: E402
from toughen.runs import read_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/demo/pgd", help="run directory of the model to evaluate")
    ap.add_argument("--n", type=int, default=200, help="first N test examples")
    ap.add_argument("--eps", type=float, default=None, help="default: the run's training eps")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-art", action="store_true", help="skip ART's AutoAttack")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()

    import torchattacks  # optional benchmark dependency (pyproject's `bench` extra)

    torch.set_num_threads(args.threads)
    info = common.machine_info()
    cfg = read_config(args.run)
    train = cfg["train"]
    eps = args.eps if args.eps is not None else train["eps"]
    bounds = tuple(cfg["data_info"]["bounds"])
    model = toughen.load(args.run)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    splits = load_data(train["data"], train["data_dir"], train["val_size"])
    x, y = splits.x_test[: args.n], splits.y_test[: args.n]
    n = len(x)
    with torch.no_grad():
        clean = model(x).argmax(1) == y

    def ours(suite, amp=None, net=model):
        r = toughen.evaluate(net, x, y, suite=suite, eps=eps, norm="linf", bounds=bounds, seed=args.seed,
                             batch_size=n, progress=True, amp=amp)
        return {"robust": r["robust"], "seconds": r["seconds"], "per_attack": r["per_attack"]}

    def checked(x_adv: torch.Tensor) -> torch.Tensor:
        """Robust mask of a peer's result, after checking it is inside the threat model."""
        if (x_adv - x).abs().amax() > eps + 1e-5 or x_adv.min() < bounds[0] - 1e-6 or x_adv.max() > bounds[1] + 1e-6:
            raise SystemExit("a peer returned inputs outside the eps-ball or the bounds")
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y) & clean

    def torchattacks_aa():
        atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=splits.num_classes,
                                      seed=args.seed)
        t0 = time.perf_counter()
        x_adv = atk(x, y)
        return {"robust": checked(x_adv), "seconds": time.perf_counter() - t0}

    def art_aa():
        from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=splits.num_classes, clip_values=bounds, device_type="cpu")
        apgd = dict(estimator=clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100, targeted=False,
                    nb_random_init=1, batch_size=n, verbose=False)
        attacks = [AutoProjectedGradientDescent(loss_type="cross_entropy", **apgd),
                   AutoProjectedGradientDescent(loss_type="difference_logits_ratio", **apgd),
                   SquareAttack(estimator=clf, norm=np.inf, eps=eps, max_iter=5000, p_init=0.8, nb_restarts=1,
                                batch_size=n, verbose=False)]
        atk = AutoAttack(clf, norm=np.inf, eps=eps, eps_step=2 * eps, attacks=attacks, batch_size=n)
        np.random.seed(args.seed)
        t0 = time.perf_counter()
        x_adv = torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))
        return {"robust": checked(x_adv), "seconds": time.perf_counter() - t0}

    print(f"{args.run}: n={n}, eps={eps}, threads={args.threads}", flush=True)
    rows: dict[str, dict] = {}
    plan = [
        ("PGD-20 (CE)", lambda: ours([Attack("pgd", {"steps": 20, "early_stop": True})])),
        ("toughen quick", lambda: ours("quick")),
        ("toughen standard", lambda: ours("standard")),
        ("toughen standard bf16", lambda: ours("standard", amp="bf16", net=model_cl)),
        ("torchattacks AutoAttack", torchattacks_aa),
    ]
    if not args.no_art:
        plan.append(("ART AutoAttack", art_aa))
    for name, fn in plan:
        rows[name] = fn()
        r = rows[name]
        print(f"  {name}: {100 * r['robust'].float().mean():.1f}% in {r['seconds']:.1f}s", flush=True)

    info["load_average_1min_end"] = common.load_average()
    ta = rows["torchattacks AutoAttack"]
    result = {
        "machine": info, "run": str(args.run), "n": n, "eps": eps, "norm": "linf",
        "clean_accuracy": clean.float().mean().item(),
        "rows": {name: {"robust_accuracy": r["robust"].float().mean().item(), "seconds": r["seconds"],
                        "per_attack": r.get("per_attack"),
                        "only_it_fooled_vs_torchattacks": int((~r["robust"] & ta["robust"]).sum()),
                        "only_torchattacks_fooled": int((r["robust"] & ~ta["robust"]).sum())}
                 for name, r in rows.items()},
    }
    common.publish("eval", result, render(result), doc=not args.no_doc)


def render(result: dict) -> str:
    rows = result["rows"]
    pct = common.fmt_pct
    ta = rows["torchattacks AutoAttack"]
    table = [["clean", pct(result["clean_accuracy"]), "", "", ""]]
    for name, r in rows.items():
        vs = common.fmt_ratio(r["seconds"], ta["seconds"]) if name != "torchattacks AutoAttack" else "1.00x"
        table.append([name, pct(r["robust_accuracy"]), f"{r['seconds']:.1f}", vs,
                      f"{r['only_it_fooled_vs_torchattacks']} / {r['only_torchattacks_fooled']}"])
        for p in r.get("per_attack") or []:
            if name.startswith("toughen standard"):
                table.append([f"&nbsp; after {p['attack']}", pct(p["robust_accuracy"]), f"{p['seconds']:.1f}", "", ""])
    goals = []
    for name in ("toughen standard", "toughen standard bf16"):
        r = rows[name]
        gap = 100 * (r["robust_accuracy"] - ta["robust_accuracy"])
        ratio = r["seconds"] / ta["seconds"]
        met = gap <= 0.5 + 1e-9 and ratio <= 1.0
        goals.append([f"{name} vs torchattacks AutoAttack", f"{gap:+.1f}", f"{ratio:.2f}x",
                      "met" if met else "**missed**"])
    order = [rows["toughen standard"]["robust_accuracy"], rows["toughen quick"]["robust_accuracy"],
             rows["PGD-20 (CE)"]["robust_accuracy"]]
    return "\n".join([
        "## Evaluation: the `standard` suite against AutoAttack (`benchmarks/bench_eval.py`)", "",
        common.machine_line(result["machine"]), "",
        f"{result['run']} on the first {result['n']} mnist5k test digits, L-inf eps = {result['eps']}, one process, "
        "one torch thread, each contender run once. `fooled vs torchattacks`: examples this contender fooled that "
        "torchattacks' AutoAttack missed / that it missed and torchattacks fooled. torchattacks' AutoAttack "
        "(version standard) runs APGD, APGD-T and FAB-T at its default 10 steps, not AutoAttack's 100; ART's "
        "AutoAttack is given AutoAttack's standard budgets (APGD-CE, APGD-DLR untargeted, Square 5,000, "
        "1 restart each).", "",
        common.md_table(["evaluation", "robust accuracy", "seconds", "time vs torchattacks",
                         "fooled vs torchattacks"], table),
        "",
        f"Ordering: standard {pct(order[0])} <= quick {pct(order[1])} <= PGD-20 {pct(order[2])}: "
        f"{'yes' if order[0] <= order[1] <= order[2] else '**no**'}.", "",
        "Goal: robust accuracy at most 0.5 points above torchattacks' AutoAttack, in at most its time.", "",
        common.md_table(["contender", "robust acc. gap (points)", "time ratio", ""], goals),
    ])


if __name__ == "__main__":
    main()
