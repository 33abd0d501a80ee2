"""The training loop: schedules, the per-batch recipe step, and per-epoch validation."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from toughen.attacks import Attack
from toughen.data import Splits
from toughen.errors import ToughenUsageError
from toughen.evaluation import attack_correct, clean_correct
from toughen.runs import append_jsonl
from toughen.train.config import TrainConfig
from toughen.train.recipes import RECIPES, RecipeContext


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1) of training."""
    if schedule == "onecycle":  # linear up over the first 30%, then linear down to 0
        return progress / 0.3 if progress < 0.3 else max(0.0, (1 - progress) / 0.7)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "piecewise":  # x0.1 at 50% and again at 75% (Madry et al., Rice et al.)
        return 1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01
    return 1.0


def eps_at(eps: float, warmup: float, progress: float) -> float:
    """eps ramps linearly from 0 over the first ``warmup`` fraction of training."""
    if warmup <= 0 or progress >= warmup:
        return eps
    return eps * progress / warmup


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def validate(model: nn.Module, splits: Splits, cfg: TrainConfig, generator: torch.Generator) -> tuple[float, float]:
    """Clean and PGD accuracy on the validation split (the model is put in eval mode)."""
    model.eval()
    steps = cfg.val_attack_steps if cfg.val_attack_steps is not None else max(cfg.steps, 1)
    clean = clean_correct(model, splits.x_val, splits.y_val).float().mean().item()
    robust = attack_correct(
        model, splits.x_val, splits.y_val, Attack("pgd", {"steps": steps, "early_stop": True}),
        eps=cfg.eps, norm=cfg.norm, bounds=splits.bounds, generator=generator,
    ).float().mean().item()
    return clean, robust


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    *,
    metrics_path: Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``splits`` with ``cfg``'s recipe; return the per-epoch metrics.

    Each epoch appends one row to ``metrics_path`` (JSON lines): epoch, loss, train and validation
    clean and robust accuracy, eps, lr, seconds.
    """
    device = next(model.parameters()).device
    recipe = RECIPES.get(cfg.recipe)
    optimizer = make_optimizer(model, cfg)
    # Two explicit generators: one for the order of batches, one for attacks' random starts.
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    attack_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    ctx = RecipeContext(
        eps=cfg.eps, norm=cfg.norm, steps=cfg.steps, step_size=cfg.resolved_step_size(),
        bounds=splits.bounds, lam=cfg.lam, generator=attack_gen,
    )
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "")
    # fp16 needs loss scaling to keep small gradients from underflowing; bf16 does not.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    n = len(splits.x_train)
    batches_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * batches_per_epoch
    history: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(n, generator=shuffle_gen)
        loss_sum = clean_hits = clean_seen = adv_hits = adv_seen = 0.0
        bar = tqdm(range(batches_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
        for b in bar:
            progress_frac = ((epoch - 1) * batches_per_epoch + b) / total
            lr = cfg.lr * lr_factor(cfg.lr_schedule, progress_frac)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # A fresh step size for the warmed-up eps keeps the attack's reach proportional.
            ctx.eps = eps_at(cfg.eps, cfg.eps_warmup, progress_frac)
            ctx.step_size = cfg.resolved_step_size() * (ctx.eps / cfg.eps if cfg.eps > 0 else 1.0)
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = splits.x_train[idx].to(device).contiguous(memory_format=memory_format)
            y = splits.y_train[idx].to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = recipe(model, x, y, ctx)
            if not torch.isfinite(out.loss):
                raise TrainingDiverged(
                    f"the loss became {out.loss.item()} in epoch {epoch}, batch {b}; "
                    "lower --lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += out.loss.item() * len(y)  # note: a sync point, once per batch
            if out.clean_logits is not None:
                clean_hits += (out.clean_logits.argmax(1) == y).sum().item()
                clean_seen += len(y)
            if out.adv_logits is not None:
                adv_hits += (out.adv_logits.argmax(1) == y).sum().item()
                adv_seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / ((b + 1) * cfg.batch_size):.3f}", eps=f"{ctx.eps:.3f}")
        train_seconds = time.perf_counter() - start
        val_clean, val_robust = validate(model, splits, cfg, attack_gen)
        row = {
            "epoch": epoch,
            "loss": loss_sum / n,
            "train_clean_accuracy": clean_hits / clean_seen if clean_seen else None,
            "train_robust_accuracy": adv_hits / adv_seen if adv_seen else None,
            "val_clean_accuracy": val_clean,
            "val_robust_accuracy": val_robust,
            "eps": ctx.eps,
            "lr": lr,
            "seconds": train_seconds,
            "val_seconds": time.perf_counter() - start - train_seconds,
        }
        history.append(row)
        if metrics_path is not None:
            append_jsonl(metrics_path, row)
        if on_epoch is not None:
            on_epoch(row)
    return history


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ToughenUsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ToughenUsageError("--device cuda was asked for, but this PyTorch build sees no GPU")
    return dev
