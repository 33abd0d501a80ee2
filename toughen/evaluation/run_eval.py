"""Evaluate a run directory's model on its test split: what `toughen eval RUN_DIR` does, as a function.

    from toughen.evaluation.run_eval import evaluate_run
    evaluate_run("runs/pgd", attack="pgd", steps=100)["robust_accuracy"]
    evaluate_run("runs/pgd", suite="standard", eps_sweep=[0.1, 0.2, 0.3])["curve"]
    radius_run("runs/pgd")["radius"]["median"]      # per-example robust radii, the curve from one run

Each result is also a row of RUN_DIR/evaluations.jsonl, which the report reads.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import torch

from toughen import threat
from toughen.attacks import Attack, get_attack
from toughen.data import load_data
from toughen.errors import ToughenUsageError, check_number
from toughen.evaluation import indicators as ind
from toughen.evaluation.attack_eval import evaluate_attack
from toughen.evaluation.audit import deterministic_check
from toughen.evaluation.certified import bracket, certificate_row, run_certification
from toughen.evaluation.radius import default_grid, radius_summary, robust_radii
from toughen.evaluation.suite import evaluate, resolve_suite, robustness_curve, suite_draws, with_amp
from toughen.runs import load, read_config, record_evaluation
from toughen.runtime import check_device, setup as setup_distributed, stream_seed

STATE_FILE = "eval_state.json"  # in the run directory while a suite evaluation is under way
RANDOMNESS_CHECK_N = 32  # examples of the one determinism check before a standard suite


def evaluate_run(
    run_dir: str | Path,
    *,
    attack: str | None = None,
    suite: str | None = None,
    eps: float | None = None,
    norm: str | None = None,
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    loss: str = "ce",
    n: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    eps_sweep: Sequence[float] | None = None,
    amp: str | None = None,
    certify: str | None = None,
    certify_options: dict[str, Any] | None = None,
    surrogate: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the model of an image run directory on the first ``n`` examples of its test split
    (all by default) at radius ``eps`` in norm ``norm`` (default: the run's), and record the result
    in RUN_DIR/evaluations.jsonl.

    One attack: ``attack`` (default pgd, with ``steps``, ``step_size``, ``restarts`` and ``loss``;
    early-stopped, which leaves robust accuracy unchanged and skips examples already fooled); or the
    worst case over an attack ``suite`` (quick, standard, thorough, rand; resumable through
    RUN_DIR/eval_state.json). A model whose two forward passes of the same inputs differ (the
    audit's ``deterministic`` check, on a few examples) is evaluated with ``rand`` when ``standard``
    is asked for: the result then says so in ``suite_reason``. ``eps_sweep`` adds a robustness
    curve at those radii, with the suite, or with the one attack as a one-attack suite. ``amp`` is
    the precision of the attack passes (None: fp32; "auto" chooses by timing).

    The result has clean_accuracy, robust_accuracy, attack, eps, norm, n, seconds and
    per_class_robust_accuracy; a suite or an eps_sweep adds suite, per_attack, amp and precision,
    and an eps_sweep adds curve. ``certify`` (ibp, crown or smoothing, with ``certify_options``
    such as sigma) also certifies the same examples and adds ``certified`` (the certification's
    numbers) and ``bracket`` (certified <= true <= attacked, with its width and what it means). Under torchrun each rank attacks its shard with its own seed (``stream_seed(seed,
    rank)``), the ranks' results are merged, and rank 0 records them.

    A suite (or an eps_sweep) also computes the indicators of attack failure
    (:mod:`toughen.evaluation.indicators`): ``warnings`` (none for a healthy evaluation; each curve
    row has its own where any fired) and ``indicators``, the counts behind them, summed over
    torchrun's ranks. ``surrogate``, a run directory of a model trained on the same data, adds its
    transfer attack to the suite (``transfer_failure``) and is named in the row.
    """
    if suite is not None and attack is not None:
        raise ToughenUsageError("give --suite or --attack, not both")
    run_dir = Path(run_dir)
    # text runs evaluate in their own package (`toughen eval` dispatches there)
    cfg, eps, norm, bounds = _image_run(run_dir, eps, norm, "{run_dir} is a {kind} run: evaluate it with "
                                        "toughen.text.cli.evaluate_run, or `toughen eval {run_dir}`")
    attack = attack or "pgd"
    if suite is None:
        get_attack(attack)
    threat.check_eps(eps, norm, bounds)
    if suite is None:
        if steps < 0:
            raise ToughenUsageError(f"--steps must be >= 0, got {steps}")
        if restarts < 1:
            raise ToughenUsageError(f"--restarts must be >= 1, got {restarts}")
    _check_n(n)
    if suite is not None:
        name, attacks = resolve_suite(suite)
    else:
        name, attacks = "custom", [_one_attack(attack, steps, step_size, restarts, loss)]
    one = suite is None and eps_sweep is None  # one attack and no curve: evaluate_attack, no suite's bookkeeping
    if surrogate is not None and one:
        raise ToughenUsageError("--surrogate adds a transfer attack to a suite: give --suite (or --eps-sweep)")
    if one:  # a suite chooses its precision itself, in evaluate
        attacks = with_amp(attacks, amp)

    dist, dev = setup_distributed(check_device(device))  # under torchrun: each rank its shard
    if certify is not None and dist.enabled:
        raise ToughenUsageError("--certify runs in one process; run toughen eval without torchrun")
    model = load(run_dir, device=dev)
    surrogate_model = None if surrogate is None else ind.load_surrogate(
        surrogate, device=dev, num_classes=cfg["data_info"]["num_classes"], input_shape=cfg["data_info"]["input_shape"])
    x, y = _test_examples(cfg, n)
    suite_reason = None
    if suite == "standard":  # a randomized model gets the suite made for it (EOT, judged over draws)
        check = deterministic_check(model, x[:RANDOMNESS_CHECK_N].to(dev))
        if check["status"] != "pass":
            name, attacks = resolve_suite("rand")
            suite_reason = (f"the model is randomized (two forward passes of the same "
                            f"{min(len(x), RANDOMNESS_CHECK_N)} inputs differ by up to {check['max_difference']:.3g}): "
                            "the rand suite attacks it with expectation over transformation instead of standard")
    draws = suite_draws(name)
    xs, ys, rank_seed = dist.shard(x), dist.shard(y), stream_seed(seed, dist.rank)
    progress = progress and dist.is_main
    if one:
        result = evaluate_attack(model, xs, ys, attacks[0], eps=eps, norm=norm, bounds=bounds, seed=rank_seed,
                                 progress=progress)
    else:
        result = evaluate(model, xs, ys, suite=attacks, eps=eps, norm=norm, bounds=bounds, seed=rank_seed,
                          progress=progress, state_file=None if dist.enabled else run_dir / STATE_FILE, amp=amp,
                          draws=draws, surrogate=surrogate_model)
    local = result
    result = dist.merge_evaluation(result)
    if not one and dist.enabled:  # the warnings of all the shards: their counts added up
        result["indicators"] = ind.merge_counts(dist.gather(local["indicators"]))
        result["warnings"] = ind.warnings_of(
            result["indicators"], round(result["clean_accuracy"] * result["n"]),
            [round(p["robust_accuracy"] * result["n"]) for p in result["per_attack"]], result["n"])
    robust = result.pop("robust")
    result.pop("expected", None)
    if not one:
        result["suite"] = name
        result["attack"] = f"suite:{name}" if suite is not None else attacks[0].label
    if suite_reason is not None:
        result["suite_reason"] = suite_reason
    if surrogate is not None:
        result["surrogate"] = str(surrogate)
    names = cfg["data_info"]["class_names"]
    result["per_class_robust_accuracy"] = {
        names[c]: robust[y == c].float().mean().item() for c in range(len(names)) if (y == c).any()
    }
    if eps_sweep:
        rows = robustness_curve(model, xs, ys, eps_sweep, suite=attacks, norm=norm, bounds=bounds, seed=rank_seed,
                                progress=progress, amp=amp, draws=draws, surrogate=surrogate_model)
        # a row's warnings only where any fired (under torchrun, rank 0's shard's)
        result["curve"] = [{k: row[k] for k in ("eps", "robust_accuracy", "expected_robust_accuracy", "seconds",
                                                "warnings") if k in row and row[k] != []}
                           for row in dist.merge_rows(rows, len(xs))]
    if certify is not None:
        cert = run_certification(model, x.to(dev), y.to(dev), eps=eps, norm=norm, method=certify, bounds=bounds,
                                 options=certify_options or {}, progress=progress)
        result["bracket"] = bracket(cert, robust, result["robust_accuracy"])
        result["certified"] = certificate_row(cert)
    if dist.is_main:
        record_evaluation(run_dir, result)
    return result


def certify_run(
    run_dir: str | Path,
    *,
    method: str = "ibp",
    eps: float | None = None,
    norm: str | None = None,
    n: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Certify the model of an image run directory on the first ``n`` test examples (all by
    default) at ``eps`` in ``norm`` (default: the run's), and record the row in evaluations.jsonl.
    ``options`` go to :func:`toughen.certify.certify` (sigma, n0, samples, alpha, batch_size)."""
    run_dir = Path(run_dir)
    cfg, eps, norm, bounds = _image_run(run_dir, eps, norm, "{run_dir} is a {kind} run; certification bounds "
                                        "image models")
    threat.check_eps(eps, norm, bounds)
    _check_n(n)
    dev = check_device(device)
    model = load(run_dir, device=dev)
    x, y = (t.to(dev) for t in _test_examples(cfg, n))
    result = run_certification(model, x, y, eps=eps, norm=norm, method=method, bounds=bounds,
                               options={"seed": seed, **options}, progress=progress)
    row = certificate_row(result)
    record_evaluation(run_dir, {"certify": method, **row})
    return {**row, "certified": result["certified"]}


def radius_run(
    run_dir: str | Path,
    *,
    eps: float | None = None,
    norm: str | None = None,
    eps_sweep: Sequence[float] | None = None,
    n: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    refine: bool = True,
    amp: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-example robust radii of an image run's model on the first ``n`` test examples (all by
    default): :func:`toughen.evaluation.radius.robust_radii` (FAB, then FAB-T over
    ``n_target_classes`` classes; with ``refine``, APGD-CE and APGD-T at eps and at each of
    ``eps_sweep`` on the examples whose radius lies within 10% above it), recorded as one row of
    RUN_DIR/evaluations.jsonl.

    The row is an evaluation at ``eps`` (default: the run's) like any other (clean_accuracy,
    robust_accuracy = the fraction of radii > eps, per_class_robust_accuracy, attack
    ``radius:fab+fab-tK``), plus ``radius``: the median, the curve at every eps of a grid from 0 to
    the largest radius found (with ``eps_sweep``'s values and eps added), the histogram and, for
    up to a few thousand examples, every radius (null where none was found)."""
    run_dir = Path(run_dir)
    cfg, eps, norm, bounds = _image_run(run_dir, eps, norm, "{run_dir} is a {kind} run; --radius measures image "
                                        "models")
    for e in [eps, *(eps_sweep or [])]:
        threat.check_eps(e, norm, bounds)
    _check_n(n)
    dist, dev = setup_distributed(check_device(device))
    if dist.enabled:
        raise ToughenUsageError("--radius runs in one process; run toughen eval without torchrun")
    model = load(run_dir, device=dev)
    x, y = _test_examples(cfg, n)
    found = robust_radii(model, x, y, norm=norm, bounds=bounds, steps=steps, restarts=restarts,
                         n_target_classes=n_target_classes, refine_at=[eps, *(eps_sweep or [])] if refine else [],
                         amp=amp, progress=progress,
                         generator=torch.Generator(device=dev).manual_seed(seed))
    radius = found["radius"].cpu()
    robust = radius > eps
    names = cfg["data_info"]["class_names"]
    label = "radius:fab" + (f"+fab-t{n_target_classes}" if n_target_classes else "")
    result = {
        "clean_accuracy": int(found["clean"].sum()) / len(x), "robust_accuracy": int(robust.sum()) / len(x),
        "attack": label, "eps": eps, "norm": norm, "n": len(x), "seconds": found["seconds"],
        "per_class_robust_accuracy": {names[c]: robust[y == c].float().mean().item()
                                      for c in range(len(names)) if (y == c).any()},
        "radius": {**radius_summary(radius, eps_grid=default_grid(radius, include=[eps, *(eps_sweep or [])])),
                   "searches": found["searches"], "steps": steps, "restarts": restarts,
                   "n_target_classes": n_target_classes, "refined_at": sorted({float(e) for e in [eps, *(eps_sweep or [])]})
                   if refine else [], "seed": seed,
                   **({"eps_sweep": sorted(float(e) for e in eps_sweep)} if eps_sweep else {})},
    }
    record_evaluation(run_dir, result)
    return result


def _one_attack(attack: str, steps: int, step_size: float | None, restarts: int, loss: str) -> Attack:
    options: dict[str, Any] = {}
    if "loss" in inspect.signature(get_attack(attack)).parameters:
        options["loss"] = loss
    elif loss != "ce":
        raise ToughenUsageError(f"the {attack} attack has no --loss option; drop it")
    if attack == "pgd":
        # early_stop leaves robust accuracy unchanged and skips work on examples already fooled
        options.update(steps=steps, restarts=restarts, early_stop=True)
        if step_size is not None:
            options["step_size"] = check_number("--step-size", step_size, low=0)
    return Attack(attack, options)


def _image_run(run_dir: Path, eps: float | None, norm: str | None, refusal: str) -> tuple[dict, float, str, tuple]:
    """An image run's config.yaml, and the eps and norm to measure at (the run's unless given) and
    its data bounds; a run of another kind is refused with ``refusal`` ({run_dir}, {kind})."""
    cfg = read_config(run_dir)
    if cfg.get("kind") is not None:
        raise ToughenUsageError(refusal.format(run_dir=run_dir, kind=cfg["kind"]))
    train_cfg = cfg["train"]
    eps = eps if eps is not None else train_cfg["eps"]
    return cfg, eps, norm or train_cfg["norm"], tuple(cfg["data_info"]["bounds"])


def _check_n(n: int | None) -> None:
    if n is not None and n < 1:
        raise ToughenUsageError(f"--n must be >= 1, got {n}")


def _test_examples(cfg: dict, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of the run's test split (all when None)."""
    train_cfg = cfg["train"]
    splits = load_data(train_cfg["data"], train_cfg["data_dir"], train_cfg["val_size"],
                       options=train_cfg.get("data_options"))
    return splits.x_test[:n], splits.y_test[:n]
