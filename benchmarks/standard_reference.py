"""Compare toughen's ``standard`` suite with AutoAttack's ``version='standard'`` (Croce and Hein 2020):
APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries), each on the examples the
ones before left robust.

The reference is not part of toughen: point --autoattack-dir at a copy of fra31/auto-attack (the
directory holding the ``autoattack`` package). On the first --n test examples of the run's dataset
at --eps, one after the other in one process with the same torch threads, it runs:

- ``reference``: AutoAttack, its robust accuracy and its time after each attack (from its log);
- ``toughen fp32``: ``toughen.evaluate(suite="standard", amp=None)``, full-precision arithmetic
  with the memory layout chosen by timing (``fast_layout="auto"``, the default, as ``toughen eval
  --amp fp32`` runs it);
- ``toughen fp32 nchw``: the same with ``fast_layout=False``, the layout the reference uses;
- ``toughen auto``: the same with ``amp="auto"`` and ``fast_layout="auto"`` (the precision and
  memory layout chosen by timing, as ``toughen eval`` does by default).

For each it reports the robust accuracy, the seconds, the robust accuracy and seconds after each
attack, Square's share of the time and how many examples Square fooled that the white-box attacks
before it left robust (whether its queries are worth spending), and the time ratio to the reference.

    .venv/bin/toughen train --data mnist5k --recipe pgd --eps 0.3 --epochs 6 --out /tmp/fabref/pgd6
    .venv/bin/python benchmarks/standard_reference.py --autoattack-dir /tmp/auto-attack --run /tmp/fabref/pgd6

Prints one JSON object (and writes it to --out when given).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import torch

import toughen

import common  # benchmarks/common.py: the script's directory is first on sys.path

_AFTER = re.compile(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)")


def _toughen(model, x, y, eps: float, norm: str, amp: str | None, layout: bool | str) -> dict:
    start = time.perf_counter()
    r = toughen.evaluate(model, x, y, suite="standard", eps=eps, norm=norm, batch_size=len(x), amp=amp,
                         fast_layout=layout)
    seconds = time.perf_counter() - start
    rows = r["per_attack"]
    square = rows[-1]
    before_square = rows[-2]["robust_accuracy"] if len(rows) > 1 else r["clean_accuracy"]
    return {"robust_accuracy": r["robust_accuracy"], "clean_accuracy": r["clean_accuracy"],
            "seconds": round(seconds, 1), "precision": r["precision"],
            "per_attack": [{"attack": p["attack"], "robust_accuracy": p["robust_accuracy"],
                            "seconds": round(p["seconds"], 1)} for p in rows],
            "square_share_of_time": round(square["seconds"] / seconds, 3),
            "square_fooled_after_white_box": round((before_square - square["robust_accuracy"]) * len(x))}


def _reference(model, x, y, eps: float, norm: str, seed: int) -> dict:
    from autoattack import AutoAttack  # the reference, from the given directory

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.txt"
        adversary = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard",
                               seed=seed, device="cpu", verbose=True, log_path=str(log))
        start = time.perf_counter()
        x_adv, y_adv = adversary.run_standard_evaluation(x, y, bs=len(x), return_labels=True)
        seconds = time.perf_counter() - start
        text = log.read_text()
    rows, previous = [], 0.0
    for name, acc, total in _AFTER.findall(text):
        rows.append({"attack": name.lower(), "robust_accuracy": float(acc) / 100, "seconds": round(float(total) - previous, 1)})
        previous = float(total)
    out = {"robust_accuracy": float((y_adv == y).float().mean()), "seconds": round(seconds, 1), "per_attack": rows}
    if rows and rows[-1]["attack"] == "square":
        before = rows[-2]["robust_accuracy"] if len(rows) > 1 else float("nan")
        out["square_share_of_time"] = round(rows[-1]["seconds"] / seconds, 3)
        out["square_fooled_after_white_box"] = round((before - rows[-1]["robust_accuracy"]) * len(x))
    return out


def main() -> None:
    p = common.reference_parser(__doc__.split("\n\n")[0], run="/tmp/fabref/pgd6", n=200)
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for every contender")
    p.add_argument("--only", nargs="+", choices=("reference", "fp32", "fp32_nchw", "auto"),
                   default=["reference", "fp32", "fp32_nchw", "auto"])
    args = p.parse_args()

    model, x, y = common.reference_setup(args, threads=args.threads)
    result = {"run": args.run, "n": len(x), "eps": args.eps, "norm": args.norm, "threads": args.threads,
              "cpu_has_amx": bool(torch.cpu._is_amx_tile_supported())}
    if "reference" in args.only:
        result["reference"] = _reference(model, x, y, args.eps, args.norm, args.seed)
    if "fp32" in args.only:
        result["toughen_fp32"] = _toughen(model, x, y, args.eps, args.norm, None, "auto")
    if "fp32_nchw" in args.only:
        result["toughen_fp32_nchw"] = _toughen(model, x, y, args.eps, args.norm, None, False)
    if "auto" in args.only:
        result["toughen_auto"] = _toughen(model, x, y, args.eps, args.norm, "auto", "auto")
    if "reference" in result:
        ref = result["reference"]
        for side in ("toughen_fp32", "toughen_fp32_nchw", "toughen_auto"):
            if side in result:
                result[side]["time_vs_reference"] = round(result[side]["seconds"] / ref["seconds"], 2)
                result[side]["points_vs_reference"] = round(
                    100 * (result[side]["robust_accuracy"] - ref["robust_accuracy"]), 1)
    common.print_result(result, args.out)


if __name__ == "__main__":
    main()
