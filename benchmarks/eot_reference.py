"""Compare toughen's ``rand`` suite with AutoAttack's ``version='rand'`` (Croce and Hein 2020) on a
randomized model: Gaussian noise (std --sigma) added to the input of a run's model on every pass.

The reference is not part of toughen: point --autoattack-dir at a copy of fra31/auto-attack (the
directory holding the ``autoattack`` package). On the first --n test examples of the run's
dataset at L-inf --eps, both run APGD-CE then APGD-DLR, 100 steps, 1 restart, the gradient
averaged over 20 passes (EOT), each on the examples the one before left robust. They differ in
how a point is judged: AutoAttack by one forward pass (one draw of a random verdict), toughen by
--draws passes (robust only if all are right: worst of k; and the expected accuracy, the mean).
So the script also judges AutoAttack's points toughen's way, and reports:

- ``reference``: AutoAttack's robust accuracy as it reports it (one draw per check), and the same
  examples' points judged over --draws passes (worst of k and expected);
- ``toughen``: the rand suite's robust accuracy (worst of k) and expected robust accuracy;
- the seconds each took (one torch thread).

    .venv/bin/toughen train --data mnist5k --recipe pgd --eps 0.3 --epochs 6 --out /tmp/eot/pgd6
    .venv/bin/python benchmarks/eot_reference.py --autoattack-dir /tmp/auto-attack --run /tmp/eot/pgd6

Prints one JSON object (and writes it to --out when given).
"""

from __future__ import annotations

import time

import torch
from torch import nn

import toughen
from toughen.evaluation.cascade import right_in_draws

import common  # benchmarks/common.py: the script's directory is first on sys.path


class InputNoise(nn.Module):
    """The run's model with Gaussian noise of std ``sigma`` added to its input on every pass, drawn
    from its own generator (so both sides see the same kind of model, not the same draws)."""

    def __init__(self, model: nn.Module, sigma: float, seed: int):
        super().__init__()
        self.model, self.sigma, self.gen = model, sigma, torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.sigma * torch.randn(x.shape, generator=self.gen).to(x))


def _judged(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, draws: int) -> dict[str, float]:
    right = right_in_draws(model, x_adv, y, draws)
    return {"worst_of_k": float((right == 1).float().mean()), "expected": float(right.mean())}


def main() -> None:
    p = common.reference_parser(__doc__.split("\n\n")[0], run="/tmp/eot/pgd6", n=100)
    p.add_argument("--sigma", type=float, default=0.1, help="the std of the input noise")
    p.add_argument("--draws", type=int, default=10, help="forward passes that judge a point (toughen's k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=("toughen", "reference"), default=["toughen", "reference"])
    args = p.parse_args()

    base, x, y = common.reference_setup(args)
    result = {"run": args.run, "n": len(x), "eps": args.eps, "sigma": args.sigma, "draws": args.draws,
              "seed": args.seed}
    with torch.no_grad():
        result["clean_accuracy_without_noise"] = float((base(x).argmax(1) == y).float().mean())
    result["clean"] = _judged(InputNoise(base, args.sigma, args.seed + 1), x, y, args.draws)

    if "toughen" in args.only:
        start = time.perf_counter()
        r = toughen.evaluate(InputNoise(base, args.sigma, args.seed), x, y, suite="rand", eps=args.eps, seed=args.seed,
                             batch_size=len(x), amp=None, fast_layout=False, draws=args.draws)
        result["toughen"] = {
            "robust_accuracy_worst_of_k": r["robust_accuracy"],
            "expected_robust_accuracy": r["expected_robust_accuracy"],
            "clean_accuracy_worst_of_k": r["clean_accuracy"], "per_attack": r["per_attack"],
            "seconds": round(time.perf_counter() - start, 1)}

    if "reference" in args.only:
        from autoattack import AutoAttack  # the reference, from the given directory

        model = InputNoise(base, args.sigma, args.seed)
        adversary = AutoAttack(model, norm="Linf", eps=args.eps, version="rand", seed=args.seed, device="cpu",
                               verbose=False)
        start = time.perf_counter()
        x_adv, y_adv = adversary.run_standard_evaluation(x, y, bs=len(x), return_labels=True)
        seconds = round(time.perf_counter() - start, 1)
        # its robust flags: an example it fooled carries the fooling label, the others their clean prediction
        result["reference"] = {
            "robust_accuracy_one_draw": float((y_adv == y).float().mean()),
            "its_points_judged_over_draws": _judged(InputNoise(base, args.sigma, args.seed + 2), x_adv, y, args.draws),
            "seconds": seconds}

    common.print_result(result, args.out)


if __name__ == "__main__":
    main()
