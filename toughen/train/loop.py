"""The training loop, Madry et al.'s algorithm with schedules, a guard and checkpoints:

    for each epoch:
        for each batch:   lr and eps from the schedules; the recipe's loss (its attack inside);
                          with --awp the weights perturbed against it and its loss again there
                          (toughen.train.awp); update (or the recipe's own updates); the guard's
                          probe every guard_every batches
        guard probe (single-step recipes), validation, best-epoch selection, metrics row,
        checkpoint; early stop after `patience` epochs without a better one

:func:`fit` is that loop. What it trains and checkpoints is a
:class:`~toughen.train.state.TrainingState`; an epoch's pieces (the recipe in use, the guard's
probe, the metrics row, the best-epoch selection) are in :mod:`toughen.train.epoch`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from toughen.attacks import Attack
from toughen.data import Splits
from toughen.errors import ToughenUsageError
from toughen.evaluation import attack_correct, clean_correct
from toughen.precision import AUTO, Precision, autocast_for, choose_precision
from toughen.runs import append_jsonl, atomic_write_text, save_weights
from toughen.runtime import SINGLE, Dist
from toughen.train.checkpoint import CHECKPOINT, load_checkpoint
from toughen.train.config import TrainConfig
from toughen.train.cost import PassCounter
from toughen.train.ema import applied
from toughen.train.epoch import EpochTally, Selection, metrics_row, probe_guard, recipe_in_use, row_recipe
from toughen.train.recipes import traits
from toughen.train.schedules import eps_at, lr_factor
from toughen.train.state import TrainingState

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
    """Clean and robust accuracy on the validation split under ``cfg.select_attack`` (the model is
    put in eval mode). In a distributed run each rank takes its shard and the counts are summed."""
    model.eval()
    steps = cfg.val_attack_steps if cfg.val_attack_steps is not None else max(cfg.steps, 1)
    x, y = dist.shard(splits.x_val), dist.shard(splits.y_val)
    clean = clean_correct(model, x, y).sum().item()
    threat = dict(eps=cfg.eps, norm=cfg.norm, bounds=splits.bounds, generator=generator)
    if cfg.select_attack == "apgd":
        # APGD-CE, then APGD-DLR on the examples it left robust: the worst case of the two (the
        # margin loss stands in for DLR, which needs three classes, on a binary task)
        second = "dlr" if len(splits.class_names) >= 3 else "margin"
        kept = attack_correct(model, x, y, Attack("apgd", {"steps": steps, "loss": "ce"}), **threat)
        if kept.any():
            kept[kept.clone()] = attack_correct(model, x[kept], y[kept], Attack("apgd", {"steps": steps, "loss": second}),
                                                **threat)
        robust = kept.sum().item()
    else:
        robust = attack_correct(model, x, y, Attack("pgd", {"steps": steps, "early_stop": True}), **threat).sum().item()
    clean, robust = dist.sum([clean, robust])
    return clean / len(splits.y_val), robust / len(splits.y_val)


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
    robust then clean accuracy, or the last). With ``cfg.ema`` the average of the weights
    (:mod:`toughen.train.ema`) is what is validated, selected and left in ``model``; the trained
    weights of the selected epoch go to RUN_DIR/model_raw.safetensors.

    With ``run_dir``, the best epoch's weights are written to model.safetensors as training
    goes, the last epoch's to model_last.safetensors, and a checkpoint after each epoch; with
    ``resume``, training continues from that checkpoint exactly as if never interrupted.

    With ``dist`` (:mod:`toughen.runtime`, under torchrun), every rank calls this with
    the same arguments: each trains on its shard of every global batch through DDP, the metrics
    are the whole job's, and only rank 0 writes files or calls ``on_epoch``.
    """
    check_distributable(cfg, dist)
    device = next(model.parameters()).device
    if AUTO in (cfg.amp, cfg.channels_last):  # train() settles and records these; a direct caller gets them here
        cfg = with_precision(cfg, choose_training_precision(model, splits, cfg, dist))
    if run_dir is not None and metrics_path is None:
        metrics_path = Path(run_dir) / "metrics.jsonl"
    state = TrainingState.create(model, make_optimizer(model, cfg), splits, cfg, dist)
    ctx, guard = state.ctx, state.guard
    history, selection, start_epoch = [], Selection(), 1
    if resume and run_dir is not None:
        history, selection, start_epoch = resume_run(run_dir, metrics_path, state)
    # A resumed run's weights come from trained epochs: a NaN loss then is not the data's fault.
    update = ctx.update = OptimizerStep(state, run_dir, updates=1 if start_epoch > 1 else 0)

    n = len(splits.x_train)
    batches_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * batches_per_epoch
    if cfg.freeze_epochs and dist.world_size > 1:  # DDP fixes the trained parameters when it wraps the model
        raise ToughenUsageError("freeze_epochs does not run under torchrun; train the head first in one process")
    counter = PassCounter(model).attach()
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if selection.out_of_patience(epoch, cfg.patience):
                break
            model.train()
            if cfg.freeze_epochs:  # the backbone's warm-up: its new head alone, then everything
                model.freeze_body(epoch <= cfg.freeze_epochs)
            start = time.perf_counter()
            tally = EpochTally()
            counter.take()
            order = torch.randperm(n, generator=state.shuffle_gen)
            bar = tqdm(range(batches_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}",
                       disable=not progress or not dist.is_main, leave=False)
            for b in bar:
                progress_frac = ((epoch - 1) * batches_per_epoch + b) / total
                lr = set_lr(state.optimizer, cfg.lr * lr_factor(cfg.lr_schedule, progress_frac))
                recipe = recipe_in_use(guard, cfg)
                ctx.steps = recipe.steps
                # A fresh step size for the warmed-up eps keeps the attack's reach proportional.
                ctx.eps = eps_at(cfg.eps, cfg.eps_warmup, progress_frac)
                ctx.ramp = ctx.eps / cfg.eps if cfg.eps > 0 else 1.0
                ctx.step_size = recipe.step_size * ctx.ramp
                global_idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                idx = dist.shard(global_idx)  # this rank's part of the global batch
                update.at(epoch, b, grad_weight=dist.world_size * len(idx) / len(global_idx))
                x, y = state.batch(idx)
                ctx.index = idx.to(device)
                with autocast(cfg, device):
                    out = recipe.run(state.step_model, x, y, ctx)
                    loss = out.loss
                    if state.awp is not None and traits(recipe.name).awp and not out.updated:  # w + v until update()
                        state.awp.perturb(update.scaled(out.loss))
                        loss = out.recompute()
                if not out.updated:
                    update(loss)
                tally.count(out, y)
                bar.set_postfix(loss=f"{tally.loss_sum / ((b + 1) * cfg.batch_size):.3f}", eps=f"{ctx.eps:.3f}")
                if guard.active and cfg.guard_every and (b + 1) % cfg.guard_every == 0 and b + 1 < batches_per_epoch:
                    probe_guard(state, tally, counter, epoch, b + 1)
            if guard.active:  # at least once per epoch, before the epoch is validated and selected
                probe_guard(state, tally, counter, epoch, batches_per_epoch)
            tally.add_train_passes(counter.take())
            train_seconds = time.perf_counter() - start
            dist.sync_buffers(model)  # one model, validated and saved, whichever rank holds it
            with applied(state.ema, model, dist) as raw:  # with --ema, the average is validated and selected
                val_clean, val_robust = validate(model, splits, cfg, state.attack_gen, dist)
                tally.val_passes = counter.take()
                tally.sum_over_ranks(dist, device)
                if selection.offer(epoch, val_robust, val_clean, model, raw) and run_dir is not None and dist.is_main:
                    save_weights(model, Path(run_dir) / "model.safetensors")
            row = metrics_row(epoch, row_recipe(recipe, guard), tally, val_clean, val_robust, selection.best["epoch"],
                              ctx.eps, lr, n, train_seconds, time.perf_counter() - start - train_seconds)
            history.append(row)
            if metrics_path is not None and dist.is_main:
                append_jsonl(metrics_path, row)
            if run_dir is not None:
                state.save(run_dir, epoch, history, selection.best)
            if on_epoch is not None and dist.is_main:
                on_epoch(row)
    finally:
        counter.detach()
    if state.ema is not None:  # the run's model is the average; model_raw.safetensors the trained weights of its epoch
        if cfg.select == "best" and selection.best is not None:
            model.load_state_dict(selection.best["raw"])
        if run_dir is not None and dist.is_main:
            save_weights(model, Path(run_dir) / "model_raw.safetensors")
        model.load_state_dict(state.ema.shadow)
    if cfg.select == "best" and selection.best is not None:
        model.load_state_dict(selection.best["weights"])
    return history


def check_distributable(cfg: TrainConfig, dist: Dist) -> None:
    """Refuse, under torchrun, a recipe that keeps each example's perturbation in its process."""
    per_example = cfg.per_example_recipe(distributed=dist.enabled)
    if dist.enabled and per_example is not None:
        raise ToughenUsageError(
            f"the {per_example} recipe keeps each example's perturbation in the process that attacked it, and "
            "under torchrun an example moves between processes from one epoch to the next: train it in one process"
        )


def resume_run(run_dir: Path, metrics_path: Path | None, state: TrainingState) -> tuple[list[dict], Selection, int]:
    """Restore ``state`` from RUN_DIR's checkpoint, if there is one; return the metrics rows so far,
    the selection and the first epoch still to train. metrics.jsonl is cut back to the rows the
    checkpoint holds: those of an epoch that did not reach its checkpoint are trained again."""
    history, selection, start_epoch = [], Selection(), 1
    ckpt = load_checkpoint(run_dir)
    if ckpt is not None:
        state.restore(ckpt, run_dir)
        history, selection, start_epoch = ckpt["history"], Selection(ckpt["best"]), ckpt["epoch"] + 1
    if metrics_path is not None and state.dist.is_main:
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
    return history, selection, start_epoch


@dataclass
class OptimizerStep:
    """The recipe context's ``update(loss)``: backward and one optimizer step, once the loss is
    known to be finite. The loop calls it after a recipe that returns its loss; a recipe that takes
    its own steps (free, atta_free) calls ``ctx.update(loss)`` itself. Where training is (``at``)
    and how many steps it has taken are kept here for the message of a diverged loss."""

    state: TrainingState
    run_dir: Path | None
    updates: int = 0  # optimizer steps taken so far: a loss NaN before the first is not lr's fault
    epoch: int = 0
    batch: int = 0
    grad_weight: float = 1.0  # this rank's share of the global batch, times the world size

    def at(self, epoch: int, batch: int, grad_weight: float) -> None:
        """The steps that follow are of ``batch`` in ``epoch``, their loss weighted by ``grad_weight``."""
        self.epoch, self.batch, self.grad_weight = epoch, batch, grad_weight

    def __call__(self, loss: torch.Tensor) -> None:
        state, cfg, dist = self.state, self.state.cfg, self.state.dist
        bad = not torch.isfinite(loss)  # note: a CPU-GPU sync point, once per step
        if dist.enabled:
            bad = dist.any(bad, state.device)  # every rank stops, or none: a lone rank would leave the others waiting
        if bad:
            if state.awp is not None:
                state.awp.restore()
            raise TrainingDiverged(diverged_message(loss.item(), self.epoch, self.batch, self.updates, cfg,
                                                    self.run_dir))
        self.updates += 1
        state.optimizer.zero_grad(set_to_none=True)
        self.scaled(loss).backward()
        if state.awp is not None:  # --awp: the gradient is w + v's, the step is taken from w (bit for bit)
            state.awp.restore()
        if cfg.grad_clip is not None:
            state.scaler.unscale_(state.optimizer)  # clip the true gradient, not the fp16-scaled one
            nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        # A recipe that steps inside its own call (free's replays) runs its next forward pass in
        # the same autocast region, whose cached bf16/fp16 copies of the weights are those from
        # before this step: drop them, or the replays would all see the batch's first weights.
        torch.clear_autocast_cache()
        if state.ema is not None:
            state.ema.update(state.model)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` as it is differentiated: weighted by this rank's share and scaled for fp16."""
        # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the
        # global batch makes that average the gradient of the global mean loss even when the last
        # batch does not split evenly.
        return self.state.scaler.scale(loss * self.grad_weight if self.grad_weight != 1.0 else loss)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every parameter group's learning rate to ``lr``; return it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


__all__ = ["TIMING_FIELDS", "TrainingDiverged", "eps_at", "fit", "lr_factor", "make_optimizer",
           "validate"]
