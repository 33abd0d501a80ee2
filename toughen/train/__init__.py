"""Adversarial training: recipes (the per-batch loss), the loop, and a whole run end to end.

From Python::

    from toughen.train import TrainConfig, train
    summary = train(TrainConfig(data="mnist5k", recipe="pgd", eps=0.3, epochs=8), out="runs/pgd")
    summary = resume("runs/pgd")  # after an interruption: continue from the last complete epoch
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from toughen._version import __version__
from toughen.attacks import Attack
from toughen.data import load_data
from toughen.evaluation import attack_correct, clean_correct
from toughen.models import build_model
from toughen.models.backbone import check_trusted, load_start_weights
from toughen.errors import ToughenUsageError
from toughen.runs import (
    RunLock, atomic_write_text, check_out_dir, git_revision, open_run_dir, read_config, save_weights, write_json,
)
from toughen.train.config import TrainConfig
from toughen.runtime import Dist, check_device, setup as setup_distributed
from toughen.precision import Precision
from toughen.train.loop import (
    TIMING_FIELDS, TrainingDiverged, choose_training_precision, fit, with_precision,
)
from toughen.train.recipes import RECIPES, RecipeContext, StepOutput, list_recipes
from toughen.train import certified, single_step  # noqa: F401  (register the single-step and certified recipes)


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    device: str = "cpu",
    on_epoch: Callable[[dict], None] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train a model as ``cfg`` says and write the run directory ``out``; return the summary.

    Under ``torchrun`` (see :mod:`toughen.runtime`) every process calls this with the
    same arguments; they train one model together and only rank 0 writes ``out``.

    Everything is validated before anything is written. ``on_epoch`` receives each epoch's
    metrics row as it is written (the CLI's ``--tensorboard`` logs through it). With ``resume``,
    ``out`` is an interrupted run of the same ``cfg``, continued from its last complete epoch
    (see :func:`resume`).
    """
    cfg.validate()
    dist, dev = setup_distributed(check_device(device))
    if not resume:
        check_out_dir(out, overwrite)  # before the data is loaded: a bad --out fails fast
    splits = load_data(cfg.data, cfg.data_dir, cfg.val_size, options=cfg.data_options)
    run_dir, lock = _open_run_dir(dist, out, overwrite, resume)
    try:
        torch.manual_seed(cfg.seed)  # the model's initial weights
        model = build_model(
            cfg.model, splits.input_shape, splits.num_classes,
            mean=splits.mean if cfg.normalize else None, std=splits.std if cfg.normalize else None,
            **cfg.model_options,
        )
        if cfg.weights is not None and not resume:  # a resumed run's checkpoint has its weights
            load_start_weights(model, cfg.weights)
        model = model.to(dev)

        # "auto" precision and layout are settled once, on the first batch, and recorded; a resumed
        # run goes on with the choice it started with, so it ends as if never interrupted.
        started = read_config(run_dir).get("precision") if resume else None
        precision = Precision.from_dict(started) if started else choose_training_precision(model, splits, cfg, dist)
        config_doc = {
            "train": cfg.to_dict(),
            "precision": precision.to_dict(),  # what ran: amp and layout, and for "auto" the probe's timings
            "data_info": {
                "input_shape": list(splits.input_shape),
                "num_classes": splits.num_classes,
                "class_names": splits.class_names,
                "bounds": list(splits.bounds),
                "mean": splits.mean,
                "std": splits.std,
                "n_train": len(splits.x_train),
                "n_val": len(splits.x_val),
                "n_test": len(splits.x_test),
            },
            "world_size": dist.world_size,  # processes that trained it (torchrun); 1 without
            "toughen_version": __version__,
            "torch_version": str(torch.__version__),
            "git_revision": git_revision(),
        }
        if not resume and dist.is_main:
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_doc, sort_keys=False))

        start = time.perf_counter()
        history = fit(model, splits, with_precision(cfg, precision), run_dir=run_dir, resume=resume, progress=progress,
                      on_epoch=on_epoch, dist=dist)
        wall_seconds = time.perf_counter() - start
        if dist.is_main:
            save_weights(model, run_dir / "model.safetensors")  # the selected epoch's weights (cfg.select)

        # The headline numbers, on the test split, which nothing above has looked at.
        model.eval()
        n = min(cfg.eval_n or len(splits.x_test), len(splits.x_test))
        # Each rank attacks its shard of the test examples; the counts are summed.
        x_test, y_test = dist.shard(splits.x_test[:n]), dist.shard(splits.y_test[:n])
        gen = torch.Generator(device=dev).manual_seed(cfg.seed + 2 + dist.rank)
        clean = clean_correct(model, x_test, y_test).sum().item()
        robust = attack_correct(
            model, x_test, y_test, Attack("pgd", {"steps": cfg.eval_steps, "early_stop": True}),
            eps=cfg.eps, norm=cfg.norm, bounds=splits.bounds, generator=gen, progress=progress and dist.is_main,
            desc="test PGD",
        ).sum().item()
        clean, robust = (v / n for v in dist.sum([clean, robust]))
        summary = {
            "data": cfg.data,
            "model": cfg.model,
            "recipe": cfg.recipe,
            "eps": cfg.eps,
            "norm": cfg.norm,
            "epochs": cfg.epochs,
            "clean_accuracy": clean,
            "robust_accuracy": robust,
            "robust_attack": f"pgd-{cfg.eval_steps}",
            "n_test": n,
            # every epoch's wall time, summed (across resumes): training steps, guard, validation
            "train_seconds": sum(r["seconds"] + r["val_seconds"] for r in history),
            "final_val_clean_accuracy": history[-1]["val_clean_accuracy"],
            "final_val_robust_accuracy": history[-1]["val_robust_accuracy"],
            **_selection(cfg, history),
            **_cost(history, len(splits.x_train)),
            "guard": _guard_summary(cfg, history),
            "precision": precision.to_dict(),
            "resumed": resume,
            **({"ema": cfg.ema} if cfg.ema else {}),  # the decay of the average that is the model above
            **({"awp": cfg.awp} if cfg.awp else {}),  # the adversarial weight perturbation's gamma
            "world_size": dist.world_size,
            "wall_seconds_this_process": wall_seconds,
        }
        if dist.is_main:
            write_json(run_dir / "summary.json", summary)
        dist.barrier()  # the files exist when any rank returns
        return summary
    finally:
        if lock is not None:
            lock.release()


def _open_run_dir(dist: Dist, out: str | Path, overwrite: bool, resume: bool) -> tuple[Path, RunLock | None]:
    """Rank 0 takes the run directory (:func:`toughen.runs.open_run_dir`: the lock, then the clean
    up); its refusal is every rank's error. Returns the directory and rank 0's lock, to release
    when the run is written."""
    error, lock = None, None
    if dist.is_main:
        try:
            lock = open_run_dir(out, overwrite, resume)
        except ToughenUsageError as e:
            error = str(e)
    error = dist.broadcast(error)
    if error is not None:
        raise ToughenUsageError(error)
    return Path(out), lock


def resume(run_dir: str | Path, *, progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Continue an interrupted run from its last complete epoch (RUN_DIR/checkpoint.pt), with the
    config it was started with; a run killed at any moment ends as if never interrupted."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        raise ToughenUsageError(f"{run_dir} has finished (summary.json exists); there is nothing to resume")
    cfg = TrainConfig.from_dict(read_config(run_dir)["train"])
    check_trusted(cfg.model)  # a factory model is Python code the run only names
    return train(cfg, run_dir, progress=progress, device=device, resume=True)


def _selection(cfg: TrainConfig, history: list[dict]) -> dict[str, Any]:
    best = max(history, key=lambda r: (r["val_robust_accuracy"], r["val_clean_accuracy"]))
    return {
        "select": cfg.select,
        "selected_epoch": best["epoch"] if cfg.select == "best" else history[-1]["epoch"],
        "best_val_robust_accuracy": best["val_robust_accuracy"],
        "epochs_run": len(history),
        "stopped_early": len(history) < cfg.epochs,
    }


def _cost(history: list[dict], n_train: int) -> dict[str, Any]:
    forward = sum(r["forward_passes"] + r["guard_forward_passes"] for r in history)
    backward = sum(r["backward_passes"] + r["guard_backward_passes"] for r in history)
    return {
        "forward_passes": forward,
        "backward_passes": backward,
        "val_forward_passes": sum(r["val_forward_passes"] for r in history),
        "val_backward_passes": sum(r["val_backward_passes"] for r in history),
        # passes per epoch against a standard epoch's 2 per training example; validation excluded
        "cost_multiplier": (forward + backward) / (2 * n_train * len(history)),
        "step_seconds": sum(r["seconds"] for r in history),
        "guard_seconds": sum(r["guard_seconds"] for r in history),
        "val_seconds": sum(r["val_seconds"] for r in history),
    }


def _guard_summary(cfg: TrainConfig, history: list[dict]) -> dict[str, Any]:
    events = [e for r in history for e in r["guard_events"]]
    return {
        "active": cfg.guarded(),
        "events": events,
        "final_recipe": history[-1]["recipe"],
    }


__all__ = [
    "RECIPES", "TIMING_FIELDS", "RecipeContext", "StepOutput", "TrainConfig", "TrainingDiverged",
    "fit", "list_recipes", "resume", "train",
]
