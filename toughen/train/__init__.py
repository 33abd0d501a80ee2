"""Adversarial training: recipes (the per-batch loss), the loop, and a whole run end to end.

From Python::

    from toughen.train import TrainConfig, train
    summary = train(TrainConfig(data="mnist5k", recipe="pgd", eps=0.3, epochs=8), out="runs/pgd")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

import toughen
from toughen.attacks import Attack
from toughen.data import load_data
from toughen.evaluation import attack_correct, clean_correct
from toughen.models import build_model
from toughen.runs import atomic_write_text, git_revision, prepare_run_dir, save_weights, write_json
from toughen.train.config import TrainConfig
from toughen.train.loop import TrainingDiverged, check_device, fit
from toughen.train.recipes import RECIPES, RecipeContext, StepOutput, list_recipes


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    device: str = "cpu",
    on_epoch: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train a model as ``cfg`` says and write the run directory ``out``; return the summary.

    Everything is validated before anything is written. ``on_epoch`` receives each epoch's
    metrics row as it is written (the CLI's ``--tensorboard`` logs through it).
    """
    cfg.validate()
    dev = check_device(device)
    splits = load_data(cfg.data, cfg.data_dir, cfg.val_size)
    run_dir = prepare_run_dir(out, overwrite)

    torch.manual_seed(cfg.seed)  # the model's initial weights
    model = build_model(
        cfg.model, splits.input_shape, splits.num_classes,
        mean=splits.mean if cfg.normalize else None, std=splits.std if cfg.normalize else None,
        **cfg.model_options,
    ).to(dev)

    config_doc = {
        "train": cfg.to_dict(),
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
        "toughen_version": toughen.__version__,
        "torch_version": str(torch.__version__),
        "git_revision": git_revision(),
    }
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_doc, sort_keys=False))

    start = time.perf_counter()
    history = fit(model, splits, cfg, metrics_path=run_dir / "metrics.jsonl", progress=progress, on_epoch=on_epoch)
    train_seconds = time.perf_counter() - start
    save_weights(model, run_dir / "model.safetensors")

    # The headline numbers, on the test split, which nothing above has looked at.
    model.eval()
    n = cfg.eval_n or len(splits.x_test)
    x_test, y_test = splits.x_test[:n], splits.y_test[:n]
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 2)
    clean = clean_correct(model, x_test, y_test).float().mean().item()
    robust = attack_correct(
        model, x_test, y_test, Attack("pgd", {"steps": cfg.eval_steps, "early_stop": True}),
        eps=cfg.eps, norm=cfg.norm, bounds=splits.bounds, generator=gen, progress=progress, desc="test PGD",
    ).float().mean().item()
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
        "train_seconds": train_seconds,
        "final_val_clean_accuracy": history[-1]["val_clean_accuracy"],
        "final_val_robust_accuracy": history[-1]["val_robust_accuracy"],
    }
    write_json(run_dir / "summary.json", summary)
    return summary


__all__ = [
    "RECIPES", "RecipeContext", "StepOutput", "TrainConfig", "TrainingDiverged", "fit", "list_recipes", "train",
]
