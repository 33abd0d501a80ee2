"""`toughen eval RUN_DIR --suite ... [--eps-sweep ...]`: the suite and the curve on a run's test split.

Kept out of cli.py so the command line stays a thin layer; the result is recorded in
RUN_DIR/evaluations.jsonl with the keys a single-attack evaluation has, plus ``suite``,
``per_attack`` and, with a sweep, ``curve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from toughen.errors import ToughenUsageError

STATE_FILE = "eval_state.json"  # in the run directory while a suite evaluation is under way


def evaluate_run_suite(
    run_dir: str | Path,
    *,
    suite: str | None,
    attack: str = "pgd",
    steps: int = 20,
    restarts: int = 1,
    loss: str = "ce",
    eps: float | None = None,
    norm: str | None = None,
    n: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    eps_sweep: Sequence[float] | None = None,
    progress: bool = False,
    amp: str | None = None,
) -> dict[str, Any]:
    from toughen import threat
    from toughen.attacks import Attack
    from toughen.data import load_data
    from toughen.evaluation.suite import evaluate, resolve_suite, robustness_curve
    from toughen.runs import load, read_config, record_evaluation
    from toughen.runtime import check_device, setup as setup_distributed, stream_seed

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    train_cfg = cfg["train"]
    eps_value = eps if eps is not None else train_cfg["eps"]
    norm = norm or train_cfg["norm"]
    bounds = tuple(cfg["data_info"]["bounds"])
    threat.check_eps(eps_value, norm, bounds)
    if n is not None and n < 1:
        raise ToughenUsageError(f"--n must be >= 1, got {n}")
    if suite is not None:
        name, attacks = resolve_suite(suite)
    else:  # --eps-sweep with a single attack: a one-attack suite
        options: dict[str, Any] = {"loss": loss}
        if attack == "pgd":
            options.update(steps=steps, restarts=restarts, early_stop=True)
        attacks, name = [Attack(attack, options)], "custom"
    # Under torchrun each rank attacks its shard of the examples (toughen.runtime).
    dist, dev = setup_distributed(check_device(device))
    model = load(run_dir, device=dev)
    splits = load_data(train_cfg["data"], train_cfg["data_dir"], train_cfg["val_size"],
                       options=train_cfg.get("data_options"))
    x, y = splits.x_test[:n], splits.y_test[:n]
    xs, ys, rank_seed = dist.shard(x), dist.shard(y), stream_seed(seed, dist.rank)
    result = evaluate(model, xs, ys, suite=attacks, eps=eps_value, norm=norm, bounds=bounds, seed=rank_seed,
                      progress=progress and dist.is_main, state_file=None if dist.enabled else run_dir / STATE_FILE,
                      amp=amp)
    result = dist.merge_evaluation(result)
    robust = result.pop("robust")
    result["suite"] = name
    result["attack"] = f"suite:{name}" if suite is not None else attacks[0].label
    names = cfg["data_info"]["class_names"]
    result["per_class_robust_accuracy"] = {
        names[c]: robust[y == c].float().mean().item() for c in range(len(names)) if (y == c).any()
    }
    if eps_sweep:
        result["curve"] = [
            {"eps": row["eps"], "robust_accuracy": row["robust_accuracy"], "seconds": row["seconds"]}
            for row in dist.merge_rows(robustness_curve(model, xs, ys, eps_sweep, suite=attacks, norm=norm,
                                                        bounds=bounds, seed=rank_seed,
                                                        progress=progress and dist.is_main, amp=amp), len(xs))
        ]
    if dist.is_main:
        record_evaluation(run_dir, result)
    return result
