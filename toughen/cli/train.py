"""`toughen train`: flags and a --config file into a TrainConfig, then toughen.train.train (or resume)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from toughen.cli.common import (given, main_process, out_path, parse_number, print_rows, read_config_file,
                                recipe_values)
from toughen.console import err
from toughen.errors import ToughenUsageError


def train(
    out_dir: Optional[Path] = typer.Option(None, "--out", parser=out_path, help="Run directory to write."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run (RUN_DIR) from its "
                                          "last complete epoch, with its own config; no other training flags."),
    config: Optional[Path] = typer.Option(None, help="YAML file of TrainConfig fields; flags override it."),
    data: Optional[str] = typer.Option(None, help="Dataset: mnist5k (default), digits, mnist, cifar10."),
    data_dir: Optional[Path] = typer.Option(None, help="Directory of the dataset's files (mnist, cifar10)."),
    model: Optional[str] = typer.Option(None, help="Model: small_cnn (default), mlp, preact_resnet18, wide_resnet; or "
                                        "a pretrained backbone to fine-tune: timm:NAME or MODULE:FUNCTION (see "
                                        "docs/training.md)."),
    weights: Optional[Path] = typer.Option(None, help="Weights to start from (safetensors or a PyTorch state dict): "
                                           "a backbone's pretrained ones (its head is new), or a model's own."),
    image_size: Optional[int] = typer.Option(None, help="Backbone: resize the images to N x N inside the model "
                                             "(default: the backbone's own input size)."),
    freeze_epochs: Optional[int] = typer.Option(None, help="Backbone: train only its new head for the first N "
                                                "epochs."),
    recipe: Optional[str] = typer.Option(None, help="Recipe: pgd (default), trades, mart, mix, fgsm, fgsm_rs, nfgsm, "
                                         "gradalign, free, atta, atta_free, augment, standard (see docs/training.md)."),
    eps: Optional[str] = typer.Option(None, help="Threat-model radius in data units, e.g. 0.3 or 8/255."),
    norm: Optional[str] = typer.Option(None, help="linf (default) or l2."),
    epochs: Optional[int] = typer.Option(None),
    steps: Optional[int] = typer.Option(None, help="Attack steps during training."),
    step_size: Optional[str] = typer.Option(None, help="Attack step size; default 2.5 * eps / steps."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient's global L2 norm to this."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing of the training loss's "
                                                    "cross-entropy, e.g. 0.1 (default 0; not MART's loss). It weakens "
                                                    "cross-entropy attacks: validate with --select-attack apgd, "
                                                    "evaluate with --suite standard."),
    attack_bn: Optional[str] = typer.Option(None, help="BatchNorm while the training attack is crafted: train "
                                            "(batch statistics, the default) or eval (running statistics, "
                                            "not updated by the attack)."),
    ema: Optional[float] = typer.Option(None, "--ema", metavar="DECAY", help="Keep an exponential moving average "
                                        "of the weights (e.g. 0.995): it is validated, selected, saved and "
                                        "evaluated; model_raw.safetensors keeps the trained weights."),
    ema_warmup: Optional[bool] = typer.Option(None, "--ema-warmup/--no-ema-warmup", help="Warm the EMA's decay up "
                                              "as min(DECAY, (1 + t) / (10 + t)) after t steps (default on)."),
    awp: Optional[float] = typer.Option(None, "--awp", metavar="GAMMA", help="Adversarial weight perturbation "
                                        "(pgd, trades, mart): each batch's loss and gradient are taken at weights "
                                        "moved against it by GAMMA times each layer's norm (e.g. 0.005)."),
    select: Optional[str] = typer.Option(None, help="The run's model: best (validation robust accuracy, default) "
                                         "or last epoch."),
    select_attack: Optional[str] = typer.Option(None, help="The validation split's attack each epoch, which picks "
                                                "the best epoch: pgd (default) or apgd (APGD-CE then APGD-DLR, the "
                                                "worst case, at the validation attack's steps: --steps)."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better validation epoch."),
    guard: Optional[bool] = typer.Option(None, "--guard/--no-guard", help="Catastrophic-overfitting guard for "
                                         "single-step recipes (default on)."),
    guard_every: Optional[int] = typer.Option(None, help="Guard probe every N batches (default 0: once per epoch)."),
    guard_fallback: Optional[str] = typer.Option(None, help="Recipe to switch to on a collapse: auto "
                                                  "(default: atta_free, or pgd2 with crops, flips or torchrun), a "
                                                  "recipe, or pgd2."),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    optimizer: Optional[str] = typer.Option(None, help="adam (default) or sgd."),
    lr_schedule: Optional[str] = typer.Option(None, help="onecycle (default), cosine, piecewise, constant."),
    eps_warmup: Optional[float] = typer.Option(None, help="Fraction of training over which eps ramps up."),
    weight_decay: Optional[float] = typer.Option(None),
    val_size: Optional[float] = typer.Option(None, help="Validation examples: a count, or a fraction < 1."),
    eval_steps: Optional[int] = typer.Option(None, help="PGD steps for the test robust accuracy."),
    seed: Optional[int] = typer.Option(None),
    amp: Optional[str] = typer.Option(None, help="Precision of the training step: auto (default: the faster of fp32 "
                                      "and bf16, timed on the first batch), fp32, bf16 or fp16."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="NHWC memory format; default: the faster, timed on the first batch."),
    crop_pad: Optional[int] = typer.Option(None, help="Random crops of every training batch, padded by N pixels "
                                           "(on the device; 4 for CIFAR-10)."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Horizontal flips of half of every "
                                        "training batch (on the device)."),
    resize: Optional[int] = typer.Option(None, help="imagefolder: resize images to N x N (shorter side, centre crop)."),
    compile_model: Optional[bool] = typer.Option(None, "--compile", help="torch.compile the training step's model "
                                                 "(recipe and attack): for GPUs; slower on CPUs."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    overwrite: bool = typer.Option(False, help="Replace toughen's files in a non-empty --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object, no progress."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log each epoch to RUN_DIR/tensorboard."),
    text_column: Optional[str] = typer.Option(None, help="Text data (csv:PATH, jsonl:PATH): the text column."),
    label_column: Optional[str] = typer.Option(None, help="Text data: the label column."),
    budget: Optional[int] = typer.Option(None, help="Text data: edits per text for the training attack."),
    holdout_family: Optional[str] = typer.Option(None, help="prompt_injection: train without this family of "
                                                 "injections (override, role_hijack, fake_system, prompt_leak, game, "
                                                 "indirect) and test on it: detection of a style never seen."),
    **recipe_flags: Any,  # one flag per recipe parameter (--lam, --beta, ...): common.with_recipe_flags
) -> None:
    """Train a model with an adversarial-training recipe and write a run directory."""
    from toughen.train import TrainConfig, train as run_train

    values: dict[str, Any] = {}
    if config is not None:
        values.update(read_config_file(config))
    values.update(given(
        data=data, data_dir=str(data_dir) if data_dir else None, model=model, recipe=recipe,
        eps=parse_number(eps, "--eps"), norm=norm, epochs=epochs, steps=steps,
        step_size=parse_number(step_size, "--step-size"),
        batch_size=batch_size, lr=lr, optimizer=optimizer, lr_schedule=lr_schedule,
        eps_warmup=eps_warmup, weight_decay=weight_decay, val_size=val_size, eval_steps=eval_steps, seed=seed,
        channels_last=channels_last, grad_clip=grad_clip, select=select, select_attack=select_attack,
        patience=patience, guard=guard, guard_every=guard_every, guard_fallback=guard_fallback, crop_pad=crop_pad,
        flip=flip, compile=compile_model, ema=ema, ema_warmup=ema_warmup, awp=awp,
        weights=str(weights) if weights is not None else None, freeze_epochs=freeze_epochs,
        label_smoothing=label_smoothing, attack_bn=attack_bn,
    ))
    values.update(recipe_values(recipe_flags))
    if amp is not None:
        from toughen.precision import parse_amp

        values["amp"] = parse_amp(amp)  # fp32 is None, so it cannot ride with the flags above
    if image_size is not None:
        values["model_options"] = {**values.get("model_options", {}), "image_size": image_size}
    if resize is not None:
        values["data_options"] = {**values.get("data_options", {}), "resize": resize}
    if resume is not None:
        if out_dir is not None or config is not None or values:
            raise ToughenUsageError("--resume continues a run with its own config; give no --out, --config or "
                                    "training flags with it")
        from toughen.train import resume as resume_run

        summary = _diverged_is_an_error(resume_run, resume, progress=not json_out, device=device)
        _show(summary, f"{resume}", json_out)
        return
    if out_dir is None:
        raise ToughenUsageError("give --out RUN_DIR (or --resume RUN_DIR to continue an interrupted run)")
    values.update(given(text_column=text_column, label_column=label_column, budget=budget,
                        holdout_family=holdout_family))
    from toughen.text.data import is_text_data

    if is_text_data(values.get("data")):  # text datasets train in toughen.text (see docs/text.md)
        from toughen.text.cli import train_command

        train_command(values, out_dir, overwrite=overwrite, json_out=json_out, device=device)
        return
    cfg = TrainConfig.from_dict(values)
    logger = None
    if tensorboard and main_process():
        from toughen.report.tensorboard import TensorBoardLogger

        logger = TensorBoardLogger(out_dir / "tensorboard")  # fails here, before training, if not installed
    try:
        summary = _diverged_is_an_error(run_train, cfg, out_dir, overwrite=overwrite, progress=not json_out,
                                        device=device, on_epoch=logger)
    finally:
        if logger is not None:
            logger.close()
    _show(summary, f"{out_dir}", json_out)


def _show(summary: dict, title: str, json_out: bool) -> None:
    if not main_process():
        return
    if json_out:
        print(json.dumps(summary))
    else:
        print_rows(title, [summary])


def _diverged_is_an_error(fn, *args, **kwargs):
    """A NaN or infinite loss: one clear line and exit status 1 (the last good checkpoint stays)."""
    from toughen.train import TrainingDiverged

    try:
        return fn(*args, **kwargs)
    except TrainingDiverged as e:
        err.print(f"[bold red]training diverged:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
