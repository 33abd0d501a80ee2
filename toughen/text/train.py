"""Training text classifiers end to end: the config, the loop, the run directory.

The run directory has the same files as an image run (config.yaml, metrics.jsonl,
model.safetensors, summary.json, evaluations.jsonl); config.yaml says ``kind: text``, which is
how `toughen eval` knows to use text attacks on it.

    from toughen.text.train import TextTrainConfig, train_text
    summary = train_text(TextTrainConfig(recipe="text_augment", budget=3), out="runs/text_a2t")
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from toughen._version import __version__
from toughen import threat
from toughen.errors import ToughenUsageError
from toughen.runs import (
    append_jsonl, atomic_write_text, check_out_dir, git_revision, load_weights, open_run_dir, read_config, run_weights,
    save_weights, write_json,
)
from toughen.text.attacks import DISCRETE, TEXT_ATTACKS
from toughen.text.data import TextSplits, is_text_data, load_text_data
from toughen.text.evaluation import evaluate_text_attack
from toughen.text.models import build_text_model, is_text_model
from toughen.text.recipes import TEXT_RECIPES, TextRecipeContext
from toughen.train.config import from_known_fields
from toughen.train.ema import EMA, applied
from toughen.runtime import check_device
from toughen.train.loop import TrainingDiverged, make_optimizer
from toughen.train.schedules import lr_factor


@dataclass
class TextTrainConfig:
    # what to train
    data: str = "prompt_injection"
    text_column: str = "text"
    label_column: str = "label"
    val_size: float = 0.1
    holdout_family: str | None = None  # train without this family of texts, test on it (prompt_injection)
    train_n: int | None = None  # train on the first train_n texts of the (shuffled) training split; all when None
    model: str = "char_cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    # how to train it
    recipe: str = "text_augment"
    attack: str = "char_obfuscate"  # the discrete attack text_augment trains against
    budget: int = 3  # edits per text for the discrete attacks
    # text_augment's defaults are the best measured on the validation split (docs/text.md, "Defaults,
    # measured"): the whole batch attacked, by a search with dropout off
    fraction: float = 1.0  # of each batch attacked online (text_augment)
    max_candidates: int = 24  # edits tried per step by the training attack (cheap, as in A2T)
    attack_eval_mode: bool = True  # text_augment: the training attack searches with dropout off
    eps: float = 1.0  # radius on the input embeddings (embed_pgd, freelb)
    norm: str = "l2"
    steps: int = 3  # ascent steps on the embeddings
    step_size: float | None = None
    lam: float = 1.0
    epochs: int = 3  # measured with the defaults above: text_augment meets its goal in 3 (docs/text.md)
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float | None = None  # None: 5e-3 for char_cnn, 5e-4 for hf: models (both measured), 2e-3 for word_bag
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "onecycle"
    seed: int = 0
    ema: float | None = None  # an EMA of the weights (toughen.train.ema) is the validated and saved model
    ema_warmup: bool = True
    # how to measure it
    eval_attack: str = "char_obfuscate"
    eval_budget: int | None = None  # default: budget
    val_n: int = 200  # validation texts attacked each epoch
    eval_n: int | None = None  # test texts evaluated (all when None)

    def __post_init__(self) -> None:
        if self.lr is None:  # settled here, so config.yaml records the number a run used
            # hf: of 5e-5 to 1e-3, 5e-4 (tied with 1e-3) fine-tuned MiniLM best on 320 prompt_injection
            # texts in 2 epochs (docs/text.md, "The MiniLM demo, measured")
            self.lr = 5e-3 if self.model == "char_cnn" else 5e-4 if self.model.startswith("hf:") else 2e-3

    def validate(self) -> "TextTrainConfig":
        if not is_text_data(self.data):
            raise ToughenUsageError(f"{self.data!r} is not a text dataset; use prompt_injection, csv:PATH or jsonl:PATH")
        if not is_text_model(self.model):
            raise ToughenUsageError(f"unknown text model {self.model!r}; choose char_cnn, word_bag or hf:PATH_OR_NAME")
        TEXT_RECIPES.get(self.recipe)
        for name in (self.attack, self.eval_attack):
            TEXT_ATTACKS.get(name)
        if self.attack not in DISCRETE:
            raise ToughenUsageError(f"the training attack must be a discrete one ({', '.join(DISCRETE)}); for "
                                    "embedding-space training use --recipe embed_pgd or freelb")
        threat.check_norm(self.norm)
        for name, low in (("budget", 0), ("epochs", 1), ("batch_size", 1), ("steps", 0), ("val_n", 1),
                          ("max_candidates", 1), ("train_n", 1)):
            value = getattr(self, name)
            if name == "train_n" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ToughenUsageError(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.eval_budget is not None and (not isinstance(self.eval_budget, int) or self.eval_budget < 0):
            raise ToughenUsageError(f"eval_budget must be a whole number >= 0, got {self.eval_budget!r}")
        if not isinstance(self.attack_eval_mode, bool):
            raise ToughenUsageError(f"attack_eval_mode is true or false, got {self.attack_eval_mode!r}")
        if not 0 <= self.fraction <= 1:
            raise ToughenUsageError(f"fraction is the part of each batch attacked, in [0, 1]; got {self.fraction}")
        if self.eps < 0 or self.lam < 0 or self.lr <= 0:
            raise ToughenUsageError("eps and lam must be >= 0 and lr > 0")
        if self.ema is not None and (isinstance(self.ema, bool) or not isinstance(self.ema, (int, float))
                                     or not 0 <= self.ema < 1):
            raise ToughenUsageError(f"ema is the decay of the weights' average, in (0, 1) (0: off), got {self.ema!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ToughenUsageError(f"unknown optimizer {self.optimizer!r}; choose adam or sgd")
        if self.lr_schedule not in ("constant", "onecycle", "cosine", "piecewise"):
            raise ToughenUsageError(f"unknown lr_schedule {self.lr_schedule!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TextTrainConfig":
        return from_known_fields(cls, values, "these options do not apply to text data: {unknown}")


def evaluated_threat(train: dict[str, Any]) -> float:
    """The threat size a text run is measured at, from its config's ``train`` section:
    ``eval_budget`` when set, else the edit budget for a discrete evaluation attack and the
    embedding radius ``eps`` for embed_pgd."""
    if train.get("eval_budget") is not None:
        return train["eval_budget"]
    return train["budget"] if train.get("eval_attack", "char_obfuscate") in DISCRETE else train["eps"]


def _eval_budget(cfg: TextTrainConfig) -> float:
    return evaluated_threat(cfg.to_dict())


def fit_text(model, splits: TextSplits, cfg: TextTrainConfig, *, metrics_path: Path | None = None,
             raw_path: Path | None = None, progress: bool = True) -> list[dict]:
    """Train ``model`` in place; one metrics row per epoch (loss, train and validation accuracies).
    With ``cfg.ema`` the average is validated and is the model at the end; the trained weights go
    to ``raw_path``."""
    device = next(model.parameters()).device
    recipe = TEXT_RECIPES.get(cfg.recipe)
    optimizer = make_optimizer(model, cfg)  # reads optimizer, lr, momentum, weight_decay
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    attack_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    ctx = TextRecipeContext(
        budget=cfg.budget, attack=cfg.attack, attack_options={"max_candidates": cfg.max_candidates},
        fraction=cfg.fraction, attack_eval_mode=cfg.attack_eval_mode, eps=cfg.eps, norm=cfg.norm, steps=cfg.steps,
        step_size=cfg.step_size, lam=cfg.lam, generator=attack_gen,
    )
    # the discrete attacks draw candidates on the CPU
    if cfg.recipe == "text_augment":
        ctx.generator = torch.Generator().manual_seed(cfg.seed + 1)
    n = len(splits.x_train)
    per_epoch = math.ceil(n / cfg.batch_size)
    history = []
    ema = EMA(model, cfg.ema, cfg.ema_warmup) if cfg.ema else None
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(n, generator=shuffle_gen).tolist()
        loss_sum = clean_hits = clean_seen = adv_hits = adv_seen = 0.0
        bar = tqdm(range(per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
        for b in bar:
            lr = cfg.lr * lr_factor(cfg.lr_schedule, ((epoch - 1) * per_epoch + b) / (cfg.epochs * per_epoch))
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            texts, y = [splits.x_train[i] for i in idx], splits.y_train[idx].to(device)
            out = recipe(model, texts, y, ctx)
            if not torch.isfinite(out.loss):
                raise TrainingDiverged(f"the loss became {out.loss.item()} in epoch {epoch}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model)
            loss_sum += out.loss.item() * len(y)
            if out.clean_logits is not None:
                clean_hits += (out.clean_logits.argmax(1) == y).sum().item()
                clean_seen += len(y)
            # text_augment attacks only part of the batch; its adversarial logits then match no
            # prefix of y, so the running robust accuracy is kept only for whole-batch attacks
            if out.adv_logits is not None and len(out.adv_logits) == len(y):
                adv_hits += (out.adv_logits.argmax(1) == y).sum().item()
                adv_seen += len(y)
        train_seconds = time.perf_counter() - start
        model.eval()
        with applied(ema, model):
            val = evaluate_text_attack(model, splits.x_val[: cfg.val_n], splits.y_val[: cfg.val_n], cfg.eval_attack,
                                       budget=_eval_budget(cfg), seed=cfg.seed, n_examples=0)
        row = {
            "epoch": epoch, "loss": loss_sum / n,
            "train_clean_accuracy": clean_hits / clean_seen if clean_seen else None,
            "train_robust_accuracy": adv_hits / adv_seen if adv_seen else None,
            "val_clean_accuracy": val["clean_accuracy"], "val_robust_accuracy": val["robust_accuracy"],
            "val_attack_success_rate": val["attack_success_rate"], "lr": lr, "seconds": train_seconds,
            "val_seconds": time.perf_counter() - start - train_seconds,
        }
        history.append(row)
        if metrics_path is not None:
            append_jsonl(metrics_path, row)
    if ema is not None:
        if raw_path is not None:
            save_weights(model, raw_path)
        model.load_state_dict(ema.shadow)
    return history


def train_text(cfg: TextTrainConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
               device: str = "cpu") -> dict[str, Any]:
    """Train as ``cfg`` says, write the run directory ``out``, return the summary (test-split numbers)."""
    cfg.validate()
    dev = check_device(device)
    check_out_dir(out, overwrite)  # before the data is loaded: a bad --out fails fast
    splits = load_text_data(cfg.data, cfg.text_column, cfg.label_column, cfg.val_size, cfg.holdout_family)
    if cfg.train_n is not None:  # the training split is shuffled (seeded): its head is a fair sample
        splits = dataclasses.replace(splits, x_train=splits.x_train[: cfg.train_n], y_train=splits.y_train[: cfg.train_n],
                                     family_train=splits.family_train[: cfg.train_n] if splits.family_train else None)
    with open_run_dir(out, overwrite):  # one writer at a time; taken before --overwrite removes anything
        run_dir = Path(out)
        torch.manual_seed(cfg.seed)
        model = build_text_model(cfg.model, splits.num_classes, **cfg.model_options).to(dev)
        config_doc = {
            "kind": "text",
            "train": cfg.to_dict(),
            "data_info": {"num_classes": splits.num_classes, "class_names": splits.class_names,
                          "n_train": len(splits.x_train), "n_val": len(splits.x_val), "n_test": len(splits.x_test)},
            "toughen_version": __version__, "torch_version": str(torch.__version__), "git_revision": git_revision(),
        }
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_doc, sort_keys=False, allow_unicode=True))
        start = time.perf_counter()
        history = fit_text(model, splits, cfg, metrics_path=run_dir / "metrics.jsonl",
                           raw_path=run_dir / "model_raw.safetensors", progress=progress)
        train_seconds = time.perf_counter() - start
        save_weights(model, run_dir / "model.safetensors")
        model.eval()
        n = cfg.eval_n or len(splits.x_test)
        res = evaluate_text_attack(model, splits.x_test[:n], splits.y_test[:n], cfg.eval_attack, budget=_eval_budget(cfg),
                                   seed=cfg.seed + 2, class_names=splits.class_names,
                                   families=splits.family_test[:n] if splits.family_test is not None else None)
        res.pop("robust")
        summary = {
            "data": cfg.data, "model": cfg.model, "recipe": cfg.recipe, "budget": cfg.budget, "epochs": cfg.epochs,
            "clean_accuracy": res["clean_accuracy"], "robust_accuracy": res["robust_accuracy"],
            "robust_attack": f"{cfg.eval_attack}@{res['budget']}", "attack_success_rate": res["attack_success_rate"],
            "mean_edits": res["mean_edits"], "mean_queries": res["mean_queries"], "n_test": n,
            "train_seconds": train_seconds, "final_val_clean_accuracy": history[-1]["val_clean_accuracy"],
            "final_val_robust_accuracy": history[-1]["val_robust_accuracy"], "examples": res["examples"],
            **({"holdout_family": cfg.holdout_family} if cfg.holdout_family else {}),
            **({"per_family": res["per_family"]} if "per_family" in res else {}),
        }
        write_json(run_dir / "summary.json", summary)
        return summary


def is_text_run(run_dir: str | Path) -> bool:
    return read_config(run_dir).get("kind") == "text"


def load_text_run_data(run_dir: str | Path) -> TextSplits:
    """The dataset a text run was trained on, split as it was (its test split is the one to attack)."""
    train = read_config(run_dir)["train"]
    return load_text_data(train["data"], train["text_column"], train["label_column"], train["val_size"],
                          train.get("holdout_family"))


def load_text_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """The trained text model of a run directory, in eval mode."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    weights = run_weights(run_dir)
    train = cfg["train"]
    model = build_text_model(train["model"], cfg["data_info"]["num_classes"], **train["model_options"])
    load_weights(model, weights)
    return model.to(device).eval()
