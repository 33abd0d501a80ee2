"""Check toughen's FAB against the reference FABAttack_PT of AutoAttack (Croce and Hein).

The reference is not part of toughen: point --autoattack-dir at a checkout of fra31/auto-attack
(the directory holding the ``autoattack`` package). On the first --n test examples of the run's
dataset, with the same steps, restarts and target classes on both sides, it measures:

- robust accuracy at --eps (L-inf) under untargeted FAB and under FAB-T (--n-target-classes);
- in minimal-norm mode (one untargeted run from the clean input, no eps), the median over the
  examples of the smallest L-inf and L2 norm each found (0 for an example misclassified clean, inf
  where nothing was found), and the median per-example ratio ours / reference;
- the seconds each took (one torch thread).

    .venv/bin/toughen train --data mnist5k --recipe pgd --eps 0.3 --epochs 6 --out /tmp/fabref/pgd6
    .venv/bin/python benchmarks/fab_reference.py --autoattack-dir /tmp/auto-attack --run /tmp/fabref/pgd6
    .venv/bin/python benchmarks/fab_reference.py --autoattack-dir /tmp/auto-attack --only fab_t  # one part

Prints one JSON object (and writes it to --out when given).
"""

from __future__ import annotations

import time

import torch

from toughen.attacks.fab import fab, fab_minimal

import common  # benchmarks/common.py: the script's directory is first on sys.path


def _norms(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 2)


def _robust(model, x, y, x_adv, eps, norm) -> torch.Tensor:
    """Per example: classified right at x_adv, or x_adv outside the ball (then it does not count)."""
    with torch.no_grad():
        right = model(x_adv).argmax(1) == y
    return right | (_norms(x_adv - x, norm) > eps + 1e-6)


def _reference_radius(ref_cls, model, x, y, norm, steps):
    """The reference's one run from the clean input (its attack_single_run): per example the norm of
    the closest adversarial point found, 0 where x is misclassified, inf where none was found."""
    attack = ref_cls(model, norm={"linf": "Linf", "l2": "L2"}[norm], n_restarts=1, n_iter=steps, device=x.device)
    x_adv = attack.attack_single_run(x, y, use_rand_start=False, is_targeted=False)
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    return torch.where(wrong, _norms(x_adv - x, norm), torch.full_like(y, 0, dtype=x.dtype) + torch.inf)


MODES = ("fab", "fab_t", "minimal_linf", "minimal_l2")


def _median(r: torch.Tensor) -> float:
    return float(r.median())


def main() -> None:
    p = common.reference_parser(__doc__.split("\n\n")[0], run="/tmp/fabref/pgd6", n=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--n-target-classes", type=int, default=9)
    p.add_argument("--only", nargs="+", choices=MODES, default=list(MODES),
                   help="a subset of the comparisons (each takes minutes on one CPU thread)")
    args = p.parse_args()

    model, x, y = common.reference_setup(args)
    from autoattack.fab_pt import FABAttack_PT  # the reference, from --autoattack-dir

    with torch.no_grad():
        clean = round(float((model(x).argmax(1) == y).float().mean()), 4)
    result = {"run": args.run, "n": len(x), "eps": args.eps, "steps": args.steps, "restarts": args.restarts,
              "n_target_classes": args.n_target_classes, "clean_accuracy": clean}

    for name, targeted in (("fab", False), ("fab_t", True)):
        if name not in args.only:
            continue
        ours, t_ours = _timed(fab, model, x, y, eps=args.eps, norm="linf", steps=args.steps, restarts=args.restarts,
                              targeted=targeted, n_target_classes=args.n_target_classes,
                              generator=torch.Generator().manual_seed(0))
        ref = FABAttack_PT(model, norm="Linf", n_restarts=args.restarts, n_iter=args.steps, eps=args.eps, seed=0,
                           targeted=targeted, n_target_classes=args.n_target_classes, device=x.device)
        theirs, t_ref = _timed(ref.perturb, x, y)
        r_ours, r_ref = _robust(model, x, y, ours, args.eps, "linf"), _robust(model, x, y, theirs, args.eps, "linf")
        result[name] = {"robust_accuracy": {"toughen": float(r_ours.float().mean()),
                                            "reference": float(r_ref.float().mean())},
                        "examples_robust_to_one_only": {"toughen": int((r_ours & ~r_ref).sum()),
                                                        "reference": int((r_ref & ~r_ours).sum())},
                        "seconds": {"toughen": t_ours, "reference": t_ref}}

    for norm in ("linf", "l2"):
        if f"minimal_{norm}" not in args.only:
            continue
        (_, r_ours), t_ours = _timed(fab_minimal, model, x, y, norm=norm, steps=args.steps)
        r_ref, t_ref = _timed(_reference_radius, FABAttack_PT, model, x, y, norm, args.steps)
        both = torch.isfinite(r_ours) & torch.isfinite(r_ref) & (r_ref > 0)
        result[f"minimal_{norm}"] = {
            "median_norm": {"toughen": _median(r_ours), "reference": _median(r_ref)},
            "found": {"toughen": int(torch.isfinite(r_ours).sum()), "reference": int(torch.isfinite(r_ref).sum())},
            "median_ratio_toughen_over_reference": float((r_ours[both] / r_ref[both]).median()) if both.any() else None,
            "seconds": {"toughen": t_ours, "reference": t_ref},
        }

    common.print_result(result, args.out)


if __name__ == "__main__":
    main()
