"""What training changes and a checkpoint keeps: the model, the optimizer and grad scaler, the
guard, the recipe's context and the two random generators, set up for one run of
:func:`toughen.train.loop.fit`, restored from a checkpoint and saved to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toughen.data import Splits
from toughen.data.augment import crop_flip
from toughen.errors import ToughenUsageError
from toughen.runs import save_weights
from toughen.runtime import Dist, stream_seed
from toughen.train.awp import AWP
from toughen.train.checkpoint import restore_rng, rng_state, save_checkpoint
from toughen.train.config import TrainConfig
from toughen.train.ema import EMA, applied
from toughen.train.guard import Guard
from toughen.train.recipes import RecipeContext


@dataclass
class TrainingState:
    """One run's trained objects and generators; ``fit`` sets ``ctx.update`` (its optimizer step)."""

    cfg: TrainConfig
    dist: Dist
    splits: Splits
    model: nn.Module  # the bare model: validation, the guard, checkpoints
    step_model: nn.Module  # what the recipe runs: DDP-wrapped and/or compiled, or the model itself
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    guard: Guard
    ctx: RecipeContext
    shuffle_gen: torch.Generator  # the order of batches: the same on every rank
    attack_gen: torch.Generator  # attacks' random starts and the augmentation: each rank its own
    memory_format: torch.memory_format
    ema: EMA | None = None  # the average of the weights (--ema), updated after every optimizer step
    # adversarial weight perturbation (--awp): made after the recipe's loss, undone before the optimizer step
    awp: AWP | None = None

    @classmethod
    def create(cls, model: nn.Module, optimizer: torch.optim.Optimizer, splits: Splits, cfg: TrainConfig,
               dist: Dist) -> "TrainingState":
        """The state at the start of training ``model`` (moved to ``cfg``'s memory layout) with
        ``optimizer``; ``cfg``'s amp and channels_last must be settled (not "auto")."""
        device = next(model.parameters()).device
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
        guard = Guard(cfg, splits.x_val, splits.y_val, distributed=dist.enabled)
        ctx = RecipeContext(
            eps=cfg.eps, norm=cfg.norm, steps=cfg.steps, step_size=cfg.resolved_step_size(), bounds=splits.bounds,
            params=dict(cfg.recipe_params), generator=attack_gen, train_size=len(splits.x_train),
            label_smoothing=cfg.label_smoothing, attack_bn=cfg.attack_bn,
        )
        ema = EMA(model, cfg.ema, cfg.ema_warmup) if cfg.ema else None
        awp = AWP(model, cfg.awp, dist) if cfg.awp else None
        return cls(cfg, dist, splits, model, step_model, optimizer, scaler, guard, ctx, shuffle_gen, attack_gen,
                   memory_format, ema, awp)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples ``idx`` on the model's device, augmented and in its memory layout."""
        device = self.device
        x = self.splits.x_train[idx].to(device)
        if self.cfg.crop_pad or self.cfg.flip:  # on the device, the whole batch at once
            x = crop_flip(x, self.cfg.crop_pad, self.cfg.flip, self.attack_gen)
        x = x.contiguous(memory_format=self.memory_format)
        return x, self.splits.y_train[idx].to(device)

    # ---------------------------------------------------------------- checkpoint
    def restore(self, ckpt: dict[str, Any], run_dir: Path) -> None:
        """Continue from ``ckpt`` (:func:`toughen.train.checkpoint.load_checkpoint`). Under
        torchrun each rank takes back its own attack generator and carried recipe state, which
        needs the number of processes that wrote the checkpoint."""
        device = self.device
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.guard.load_state_dict(ckpt["guard"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.ctx.state = {k: v.to(device) for k, v in ckpt["recipe_state"].items()}
        restore_rng(ckpt["rng"], self.shuffle_gen, self.attack_gen)
        if not self.dist.enabled:
            return
        ranks = ckpt["rng"].get("attack_by_rank")
        if ranks is None or len(ranks) != self.dist.world_size:
            raise ToughenUsageError(
                f"{run_dir} was checkpointed by {len(ranks) if ranks else 1} process(es); resume it with "
                f"the same number (torchrun --nproc-per-node), not {self.dist.world_size}"
            )
        self.attack_gen.set_state(ranks[self.dist.rank])
        by_rank = ckpt.get("recipe_state_by_rank")
        if by_rank is not None:
            self.ctx.state = {k: v.to(device) for k, v in by_rank[self.dist.rank].items()}

    def save(self, run_dir: Path, epoch: int, history: list[dict], best: dict[str, Any] | None) -> None:
        """The end of ``epoch``: model_last.safetensors and the checkpoint. Every rank calls this
        (each rank's generator and carried state are gathered); rank 0 writes."""
        rng = rng_state(self.shuffle_gen, self.attack_gen)
        recipe_state = {k: v.detach().cpu() for k, v in self.ctx.state.items()}
        recipe_state_by_rank = None
        if self.dist.enabled:  # each rank's own attack generator and carried state (free's
            # perturbation is of the rank's own shard), so a resume continues every rank
            rng["attack_by_rank"] = self.dist.gather(self.attack_gen.get_state().cpu())
            recipe_state_by_rank = self.dist.gather(recipe_state)
        if not self.dist.is_main:
            return
        with applied(self.ema, self.model):  # the last epoch's model: the average, when there is one
            save_weights(self.model, Path(run_dir) / "model_last.safetensors")
        save_checkpoint(run_dir, {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "guard": self.guard.state_dict(),
            "recipe_state": recipe_state, "recipe_state_by_rank": recipe_state_by_rank,
            "rng": rng, "history": history, "best": best,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        })
