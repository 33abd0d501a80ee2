"""The training loop: schedules, the per-batch recipe step, the guard, per-epoch validation,
model selection, cost accounting and checkpoints.

    for each epoch:
        for each batch:   lr and eps from the schedules; the recipe's loss; update (or the
                          recipe's own updates); the guard's probe every guard_every batches
        guard probe (single-step recipes), validation, best-epoch selection, metrics row,
        checkpoint; early stop after `patience` epochs without a better one
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from toughen import threat
from toughen.attacks import Attack
from toughen.data import Splits
from toughen.data.augment import crop_flip
from toughen.errors import ToughenUsageError
from toughen.evaluation import attack_correct, clean_correct
from toughen.precision import AUTO, Precision, autocast_for, choose_precision
from toughen.runs import append_jsonl, atomic_write_text, save_weights
from toughen.runtime import SINGLE, Dist, stream_seed
from toughen.train.checkpoint import CHECKPOINT, load_checkpoint, restore_rng, rng_state, save_checkpoint
from toughen.train.config import TrainConfig
from toughen.train.cost import PassCounter
from toughen.train.guard import PGD2, Guard
from toughen.train.recipes import RECIPES, RecipeContext
from toughen.train.schedules import eps_at, lr_factor

# Fields of a metrics row that measure time, not training: they differ between identical runs.
TIMING_FIELDS = ("seconds", "guard_seconds", "val_seconds")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def diverged_message(loss: float, epoch: int, batch: int, updates: int, cfg: TrainConfig,
                     run_dir: str | Path | None) -> str:
    """What went wrong and what to do, for a loss that became NaN or infinite: the likely cause
    depends on whether any step was taken, and a checkpoint is named only if there is one."""
    where = f"the loss became {loss} in epoch {epoch}, batch {batch}"
    if updates == 0:
        return (f"{where}, before any weight update: the inputs or the model's output hold NaN or inf "
                "(check the data files and the model), so a lower --lr would not help")
    checkpoint = Path(run_dir) / CHECKPOINT if run_dir else None
    kept = f"; the last complete epoch's checkpoint is kept in {checkpoint}" \
        if checkpoint is not None and checkpoint.is_file() else ""
    fix = "lower --lr (now {:g}) or set --grad-clip".format(cfg.lr)
    if cfg.amp == "fp16":
        fix += ", or train with --amp bf16 or fp32 (fp16 overflows where they do not)"
    return f"{where}{kept}; {fix}, and train again"


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 or fp16 autocast for the recipe's forward passes (its attack included); a no-op
    when amp is off. The validation, the guard's probe and the final evaluation run in fp32."""
    return autocast_for(device, cfg.amp)


def choose_training_precision(model: nn.Module, splits: Splits, cfg: TrainConfig, dist: Dist = SINGLE) -> Precision:
    """``cfg``'s amp and channels_last, with "auto" settled by timing training passes (gradients
    of the parameters and the input) on the first ``batch_size`` training examples. Rank 0
    measures and every rank takes its choice: the ranks of one job must compute alike."""
    choice = None
    if dist.is_main:
        device = next(model.parameters()).device
        x, y = splits.x_train[:cfg.batch_size].to(device), splits.y_train[:cfg.batch_size].to(device)
        choice = choose_precision(model, x, y, amp=cfg.amp, channels_last=cfg.channels_last, parameters=True).to_dict()
    return Precision.from_dict(dist.broadcast(choice))


def with_precision(cfg: TrainConfig, precision: Precision) -> TrainConfig:
    """``cfg`` with amp and channels_last as ``precision`` settled them."""
    return dataclasses.replace(cfg, amp=precision.amp, channels_last=precision.channels_last)


def validate(model: nn.Module, splits: Splits, cfg: TrainConfig, generator: torch.Generator,
             dist: Dist = SINGLE) -> tuple[float, float]:
    """Clean and PGD accuracy on the validation split (the model is put in eval mode). In a
    distributed run each rank takes its shard and the counts are summed."""
    model.eval()
    steps = cfg.val_attack_steps if cfg.val_attack_steps is not None else max(cfg.steps, 1)
    x, y = dist.shard(splits.x_val), dist.shard(splits.y_val)
    clean = clean_correct(model, x, y).sum().item()
    robust = attack_correct(
        model, x, y, Attack("pgd", {"steps": steps, "early_stop": True}),
        eps=cfg.eps, norm=cfg.norm, bounds=splits.bounds, generator=generator,
    ).sum().item()
    clean, robust = dist.sum([clean, robust])
    return clean / len(splits.y_val), robust / len(splits.y_val)


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().cpu() for k, v in state.items()}


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    metrics_path: Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    dist: Dist = SINGLE,
) -> list[dict]:
    """Train ``model`` in place on ``splits`` with ``cfg``'s recipe; return the per-epoch metrics.

    Each epoch appends one row to ``metrics_path`` (default RUN_DIR/metrics.jsonl): loss, train
    and validation clean and robust accuracy, eps, lr, the recipe in use, forward and backward
    passes, the cost multiplier against a standard epoch, wall seconds, and guard events. At the
    end the model holds the selected weights (``cfg.select``: the best validation epoch, by
    robust then clean accuracy, or the last).

    With ``run_dir``, the best epoch's weights are written to model.safetensors as training
    goes, the last epoch's to model_last.safetensors, and a checkpoint after each epoch; with
    ``resume``, training continues from that checkpoint exactly as if never interrupted.

    With ``dist`` (:mod:`toughen.runtime`, under torchrun), every rank calls this with
    the same arguments: each trains on its shard of every global batch through DDP, the metrics
    are the whole job's, and only rank 0 writes files or calls ``on_epoch``.
    """
    per_example = cfg.per_example_recipe()
    if dist.enabled and per_example is not None:
        raise ToughenUsageError(
            f"the {per_example} recipe keeps each example's perturbation in the process that attacked it, and "
            "under torchrun an example moves between processes from one epoch to the next: train it in one process"
        )
    device = next(model.parameters()).device
    if AUTO in (cfg.amp, cfg.channels_last):  # train() settles and records these; a direct caller gets them here
        cfg = with_precision(cfg, choose_training_precision(model, splits, cfg, dist))
    if run_dir is not None and metrics_path is None:
        metrics_path = Path(run_dir) / "metrics.jsonl"
    optimizer = make_optimizer(model, cfg)
    # fp16 needs loss scaling to keep small gradients from underflowing; bf16 does not.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    # The recipe runs the DDP-wrapped model (gradients averaged across ranks); everything else
    # (validation, the guard, checkpoints) the bare one. The same object in a single process.
    step_model = dist.wrap(model, device)
    if cfg.compile:
        # Compiled once, on the first batch (tens of seconds); the bare model shares its weights.
        # On CPUs it was slower than eager bf16 + channels-last in our measurements; on GPUs it fuses
        # the attack's elementwise work.
        step_model = torch.compile(step_model)
    # Two explicit generators: one for the order of batches (the same on every rank), one for
    # attacks' random starts and the batch augmentation (each rank its own).
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    # Ranks draw different random starts; rank 0 (the only one of a single process) keeps seed + 1.
    attack_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed + 1, dist.rank))
    grad_weight = 1.0  # this rank's share of the global batch, times the world size (see below)
    guard = Guard(cfg, splits.x_val, splits.y_val)

    updates = 0  # optimizer steps taken so far (1 on resume): a loss NaN before the first is not lr's fault

    def update(loss: torch.Tensor) -> None:
        """Backward and one optimizer step; a recipe that owns its steps calls this itself."""
        nonlocal updates
        bad = not torch.isfinite(loss)  # note: a CPU-GPU sync point, once per step
        if dist.enabled:
            bad = dist.any(bad, device)  # every rank stops, or none: a lone rank would leave the others waiting
        if bad:
            raise TrainingDiverged(diverged_message(loss.item(), epoch, b, updates, cfg, run_dir))
        updates += 1
        optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the
        # global batch makes that average the gradient of the global mean loss even when the last
        # batch does not split evenly.
        scaler.scale(loss * grad_weight if grad_weight != 1.0 else loss).backward()
        if cfg.grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradient, not the fp16-scaled one
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    ctx = RecipeContext(
        eps=cfg.eps, norm=cfg.norm, steps=cfg.steps, step_size=cfg.resolved_step_size(), bounds=splits.bounds,
        lam=cfg.lam, beta=cfg.beta, free_replays=cfg.free_replays, gradalign_lambda=cfg.gradalign_lambda,
        noise_std=cfg.noise_std, augment_crop=cfg.augment_crop,
        augment_flip=cfg.augment_flip, generator=attack_gen, update=update, train_size=len(splits.x_train),
    )
    history: list[dict] = []
    best: dict[str, Any] | None = None  # epoch, key (robust, clean), weights
    start_epoch = 1
    if resume and run_dir is not None:
        ckpt = load_checkpoint(run_dir)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            guard.load_state_dict(ckpt["guard"])
            ctx.state = {k: v.to(device) for k, v in ckpt["recipe_state"].items()}
            restore_rng(ckpt["rng"], shuffle_gen, attack_gen)
            ranks = ckpt["rng"].get("attack_by_rank")
            if dist.enabled:
                if ranks is None or len(ranks) != dist.world_size:
                    raise ToughenUsageError(
                        f"{run_dir} was checkpointed by {len(ranks) if ranks else 1} process(es); resume it with "
                        f"the same number (torchrun --nproc-per-node), not {dist.world_size}"
                    )
                attack_gen.set_state(ranks[dist.rank])
                by_rank = ckpt.get("recipe_state_by_rank")
                if by_rank is not None:
                    ctx.state = {k: v.to(device) for k, v in by_rank[dist.rank].items()}
            history, best, start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
            updates = 1  # the weights come from trained epochs
        if metrics_path is not None and dist.is_main:  # drop rows of an epoch that did not reach its checkpoint
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))

    n = len(splits.x_train)
    batches_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * batches_per_epoch
    counter = PassCounter(model).attach()
    epoch = b = 0  # for update()'s message
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if cfg.patience is not None and best is not None and epoch - 1 - best["epoch"] >= cfg.patience:
                break
            model.train()
            start = time.perf_counter()
            passes = {"train": [0, 0], "guard": [0, 0]}
            guard_seconds = 0.0
            events: list[dict] = []

            def probe(batch: int) -> None:
                nonlocal guard_seconds
                _add(passes["train"], counter.take())
                t = time.perf_counter()
                dist.sync_buffers(model)  # the same model on every rank, so the same decision
                model.eval()
                event = guard.check(model, optimizer, splits.bounds, epoch, batch)
                model.train()
                if event is not None:
                    events.append(event)
                guard_seconds += time.perf_counter() - t
                _add(passes["guard"], counter.take())

            counter.take()
            order = torch.randperm(n, generator=shuffle_gen)
            loss_sum = clean_hits = clean_seen = adv_hits = adv_seen = 0.0
            bar = tqdm(range(batches_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}",
                       disable=not progress or not dist.is_main, leave=False)
            for b in bar:
                progress_frac = ((epoch - 1) * batches_per_epoch + b) / total
                lr = cfg.lr * lr_factor(cfg.lr_schedule, progress_frac)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                recipe_name = "pgd" if guard.recipe == PGD2 else guard.recipe
                recipe = RECIPES.get(recipe_name)
                ctx.steps = 2 if guard.recipe == PGD2 else cfg.steps
                base_step = threat.default_step_size(cfg.eps, 2) if guard.recipe == PGD2 else cfg.resolved_step_size()
                # A fresh step size for the warmed-up eps keeps the attack's reach proportional.
                ctx.eps = eps_at(cfg.eps, cfg.eps_warmup, progress_frac)
                ctx.step_size = base_step * (ctx.eps / cfg.eps if cfg.eps > 0 else 1.0)
                global_idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                idx = dist.shard(global_idx)  # this rank's part of the global batch
                grad_weight = dist.world_size * len(idx) / len(global_idx)
                x = splits.x_train[idx].to(device)
                if cfg.crop_pad or cfg.flip:  # on the device, the whole batch at once
                    x = crop_flip(x, cfg.crop_pad, cfg.flip, attack_gen)
                x = x.contiguous(memory_format=memory_format)
                y = splits.y_train[idx].to(device)
                ctx.index = idx.to(device)
                with autocast(cfg, device):
                    out = recipe(step_model, x, y, ctx)
                if not out.updated:
                    update(out.loss)
                loss_sum += out.loss.item() * len(y)  # note: a sync point, once per batch
                if out.clean_logits is not None:
                    clean_hits += (out.clean_logits.argmax(1) == y).sum().item()
                    clean_seen += len(y)
                if out.adv_logits is not None:
                    adv_hits += (out.adv_logits.argmax(1) == y).sum().item()
                    adv_seen += len(y)
                bar.set_postfix(loss=f"{loss_sum / ((b + 1) * cfg.batch_size):.3f}", eps=f"{ctx.eps:.3f}")
                if guard.active and cfg.guard_every and (b + 1) % cfg.guard_every == 0 and b + 1 < batches_per_epoch:
                    probe(b + 1)
            if guard.active:  # at least once per epoch, before the epoch is validated and selected
                probe(batches_per_epoch)
            _add(passes["train"], counter.take())
            train_seconds = time.perf_counter() - start
            dist.sync_buffers(model)  # one model, validated and saved, whichever rank holds it
            val_clean, val_robust = validate(model, splits, cfg, attack_gen, dist)
            val_passes = counter.take()
            if dist.enabled:  # the whole job's sums; every rank gets the same numbers
                (loss_sum, clean_hits, clean_seen, adv_hits, adv_seen, *counts) = dist.sum(
                    [loss_sum, clean_hits, clean_seen, adv_hits, adv_seen, *passes["train"], *passes["guard"],
                     *val_passes], device)
                counts = [int(c) for c in counts]
                passes = {"train": counts[0:2], "guard": counts[2:4]}
                val_passes = tuple(counts[4:6])
            key = [val_robust, val_clean]
            if best is None or key > best["key"]:
                best = {"epoch": epoch, "key": key, "weights": _clone(model.state_dict())}
                if run_dir is not None and dist.is_main:
                    save_weights(model, Path(run_dir) / "model.safetensors")
            work = sum(passes["train"]) + sum(passes["guard"])
            row = {
                "epoch": epoch,
                "recipe": recipe_name if guard.recipe != PGD2 else "pgd-2",
                "loss": loss_sum / n,
                "train_clean_accuracy": clean_hits / clean_seen if clean_seen else None,
                "train_robust_accuracy": adv_hits / adv_seen if adv_seen else None,
                "val_clean_accuracy": val_clean,
                "val_robust_accuracy": val_robust,
                "best_epoch": best["epoch"],
                "eps": ctx.eps,
                "lr": lr,
                "forward_passes": passes["train"][0],
                "backward_passes": passes["train"][1],
                "guard_forward_passes": passes["guard"][0],
                "guard_backward_passes": passes["guard"][1],
                "val_forward_passes": val_passes[0],
                "val_backward_passes": val_passes[1],
                # against a standard epoch: one forward and one backward pass per training example
                "cost_multiplier": work / (2 * n),
                "guard_events": events,
                "seconds": train_seconds,
                "guard_seconds": guard_seconds,
                "val_seconds": time.perf_counter() - start - train_seconds,
            }
            history.append(row)
            if metrics_path is not None and dist.is_main:
                append_jsonl(metrics_path, row)
            if run_dir is not None:
                rng = rng_state(shuffle_gen, attack_gen)
                recipe_state = {k: v.detach().cpu() for k, v in ctx.state.items()}
                recipe_state_by_rank = None
                if dist.enabled:  # each rank's own attack generator and carried state (free's
                    # perturbation is of the rank's own shard), so a resume continues every rank
                    rng["attack_by_rank"] = dist.gather(attack_gen.get_state().cpu())
                    recipe_state_by_rank = dist.gather(recipe_state)
            if run_dir is not None and dist.is_main:
                save_weights(model, Path(run_dir) / "model_last.safetensors")
                save_checkpoint(run_dir, {
                    "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "guard": guard.state_dict(),
                    "recipe_state": recipe_state, "recipe_state_by_rank": recipe_state_by_rank,
                    "rng": rng, "history": history, "best": best,
                })
            if on_epoch is not None and dist.is_main:
                on_epoch(row)
    finally:
        counter.detach()
    if cfg.select == "best" and best is not None:
        model.load_state_dict(best["weights"])
    return history


def _add(total: list[int], counts: tuple[int, int]) -> None:
    total[0] += counts[0]
    total[1] += counts[1]


__all__ = ["TIMING_FIELDS", "TrainingDiverged", "eps_at", "fit", "lr_factor", "make_optimizer",
           "validate"]
