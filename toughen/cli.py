"""The command line: a thin layer over the public functions.

    toughen train --data mnist5k --recipe pgd --eps 0.3 --out runs/pgd
    toughen eval runs/pgd --attack pgd --steps 100 --json
    toughen demo --out runs/demo
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from toughen.console import err, out, print_table
from toughen.errors import ToughenUsageError, check_number

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__.split("\n\n")[0])


def _fail(message: str, code: int = 2) -> None:
    # escape: a message may hold brackets, e.g. pip install 'toughen[tensorboard]', that rich would eat as markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error "
                                        "(also TOUGHEN_DEBUG=1).")) -> None:
    if debug:
        os.environ["TOUGHEN_DEBUG"] = "1"


def _read_config_file(path: Path) -> dict[str, Any]:
    """A --config YAML file: a mapping of TrainConfig fields (checked by TrainConfig.validate)."""
    if not path.is_file():
        raise ToughenUsageError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ToughenUsageError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(values, dict):
        raise ToughenUsageError(f"config file {path}: a config is a mapping of keys to values, got "
                                f"{type(values).__name__}")
    return values


def _parse_number(text: str, name: str) -> float:
    """Accept 0.3, 8/255 and the like."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ToughenUsageError(f"{name} must be a number such as 0.3 or 8/255, got {text!r}") from None


def _out_path(text: str) -> Path:
    """--out as a Path; an empty one is refused here, because Path("") is the current directory."""
    if not str(text).strip():
        raise ToughenUsageError("--out is empty; give the directory (or, for report, the file) to write")
    return Path(text)


# ----------------------------------------------------------------------------- train

@app.command()
def train(
    out_dir: Optional[Path] = typer.Option(None, "--out", parser=_out_path, help="Run directory to write."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run (RUN_DIR) from its "
                                          "last complete epoch, with its own config; no other training flags."),
    config: Optional[Path] = typer.Option(None, help="YAML file of TrainConfig fields; flags override it."),
    data: Optional[str] = typer.Option(None, help="Dataset: mnist5k (default), digits, mnist, cifar10."),
    data_dir: Optional[Path] = typer.Option(None, help="Directory of the dataset's files (mnist, cifar10)."),
    model: Optional[str] = typer.Option(None, help="Model: small_cnn (default), mlp, preact_resnet18, wide_resnet."),
    recipe: Optional[str] = typer.Option(None, help="Recipe: pgd (default), trades, mart, mix, fgsm, fgsm_rs, nfgsm, "
                                         "gradalign, free, atta, atta_free, augment, standard (see docs/training.md)."),
    eps: Optional[str] = typer.Option(None, help="Threat-model radius in data units, e.g. 0.3 or 8/255."),
    norm: Optional[str] = typer.Option(None, help="linf (default) or l2."),
    epochs: Optional[int] = typer.Option(None),
    steps: Optional[int] = typer.Option(None, help="Attack steps during training."),
    step_size: Optional[str] = typer.Option(None, help="Attack step size; default 2.5 * eps / steps."),
    lam: Optional[float] = typer.Option(None, help="Weight of the adversarial loss in the mix recipe."),
    beta: Optional[float] = typer.Option(None, help="Weight of the robustness term in trades and mart (default 6)."),
    free_replays: Optional[int] = typer.Option(None, help="Replays m of each minibatch in the free recipe (default 4)."),
    gradalign_lambda: Optional[float] = typer.Option(None, help="Weight of the GradAlign regularizer (default 0.2)."),
    noise_std: Optional[str] = typer.Option(None, help="Gaussian noise std of the augment recipe; default eps."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient's global L2 norm to this."),
    select: Optional[str] = typer.Option(None, help="The run's model: best (validation robust accuracy, default) "
                                         "or last epoch."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better validation epoch."),
    guard: Optional[bool] = typer.Option(None, "--guard/--no-guard", help="Catastrophic-overfitting guard for "
                                         "single-step recipes (default on)."),
    guard_every: Optional[int] = typer.Option(None, help="Guard probe every N batches (default 0: once per epoch)."),
    guard_fallback: Optional[str] = typer.Option(None, help="Recipe to switch to on a collapse (default nfgsm)."),
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
) -> None:
    """Train a model with an adversarial-training recipe and write a run directory."""
    from toughen.train import TrainConfig, train as run_train

    values: dict[str, Any] = {}
    if config is not None:
        values.update(_read_config_file(config))
    flags = dict(
        data=data, data_dir=str(data_dir) if data_dir else None, model=model, recipe=recipe,
        eps=_parse_number(eps, "--eps") if eps is not None else None, norm=norm, epochs=epochs, steps=steps,
        step_size=_parse_number(step_size, "--step-size") if step_size is not None else None,
        lam=lam, batch_size=batch_size, lr=lr, optimizer=optimizer, lr_schedule=lr_schedule,
        eps_warmup=eps_warmup, weight_decay=weight_decay, val_size=val_size, eval_steps=eval_steps, seed=seed,
        channels_last=channels_last, beta=beta, free_replays=free_replays,
        gradalign_lambda=gradalign_lambda,
        noise_std=_parse_number(noise_std, "--noise-std") if noise_std is not None else None,
        grad_clip=grad_clip, select=select, patience=patience, guard=guard, guard_every=guard_every,
        guard_fallback=guard_fallback, crop_pad=crop_pad, flip=flip, compile=compile_model,
    )
    values.update({k: v for k, v in flags.items() if v is not None})
    if amp is not None:
        from toughen.precision import parse_amp

        values["amp"] = parse_amp(amp)  # fp32 is None, so it cannot ride with the flags above
    if resize is not None:
        values["data_options"] = {**values.get("data_options", {}), "resize": resize}
    if resume is not None:
        if out_dir is not None or config is not None or values:
            raise ToughenUsageError("--resume continues a run with its own config; give no --out, --config or "
                                    "training flags with it")
        from toughen.train import resume as resume_run

        summary = _diverged_is_an_error(resume_run, resume, progress=not json_out, device=device)
        if not _main_process():
            return
        if json_out:
            print(json.dumps(summary))
        else:
            _print_table(f"{resume}", [summary])
        return
    if out_dir is None:
        raise ToughenUsageError("give --out RUN_DIR (or --resume RUN_DIR to continue an interrupted run)")
    text_flags = dict(text_column=text_column, label_column=label_column, budget=budget)
    values.update({k: v for k, v in text_flags.items() if v is not None})
    from toughen.text.data import is_text_data

    if is_text_data(values.get("data")):  # text datasets train in toughen.text (see docs/text.md)
        from toughen.text.cli import train_command

        train_command(values, out_dir, overwrite=overwrite, json_out=json_out, device=device)
        return
    cfg = TrainConfig.from_dict(values)
    logger = None
    if tensorboard and _main_process():
        from toughen.report.tensorboard import TensorBoardLogger

        logger = TensorBoardLogger(out_dir / "tensorboard")  # fails here, before training, if not installed
    try:
        summary = _diverged_is_an_error(run_train, cfg, out_dir, overwrite=overwrite, progress=not json_out,
                                        device=device, on_epoch=logger)
    finally:
        if logger is not None:
            logger.close()
    if not _main_process():
        return
    if json_out:
        print(json.dumps(summary))
    else:
        _print_table(f"{out_dir}", [summary])


def _main_process() -> bool:
    """False in the processes of a torchrun job other than rank 0: they print nothing."""
    from toughen.runtime import from_env

    return from_env().is_main


def _diverged_is_an_error(fn, *args, **kwargs):
    """A NaN or infinite loss: one clear line and exit status 1 (the last good checkpoint stays)."""
    from toughen.train import TrainingDiverged

    try:
        return fn(*args, **kwargs)
    except TrainingDiverged as e:
        err.print(f"[bold red]training diverged:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)


# ----------------------------------------------------------------------------- eval

@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A run directory written by `toughen train`."),
    attack: Optional[str] = typer.Option(None, help="Attack: pgd (default) or fgsm; for text runs char_obfuscate, "
                                         "word_substitute, hotflip or embed_pgd."),
    eps: Optional[str] = typer.Option(None, help="Radius; default the run's training eps."),
    norm: Optional[str] = typer.Option(None, help="Norm; default the run's."),
    steps: Optional[int] = typer.Option(None, help="PGD steps (default 20)."),
    step_size: Optional[str] = typer.Option(None, help="PGD step size; default 2.5 * eps / steps."),
    restarts: Optional[int] = typer.Option(None, help="PGD random restarts (default 1)."),
    loss: str = typer.Option("ce", help="Attack loss: ce or margin."),
    n: Optional[int] = typer.Option(None, help="Evaluate the first N test examples."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object, nothing else."),
    budget: Optional[int] = typer.Option(None, help="Text runs: edits per text for the discrete attacks."),
    suite: Optional[str] = typer.Option(None, help="Worst case over an attack suite: quick, standard or thorough "
                                        "(see docs/evaluation.md). Replaces --attack."),
    eps_sweep: Optional[str] = typer.Option(None, help="Also a robustness curve: comma-separated eps values, "
                                            "e.g. 0.1,0.2,0.3 or 2/255,4/255,8/255."),
    amp: Optional[str] = typer.Option(None, help="auto, fp32, bf16 or fp16: the precision of the attack passes "
                                      "(who is fooled is always checked in fp32). Default: auto with --suite (the "
                                      "faster of fp32 and bf16 here, and of both memory layouts), else fp32."),
) -> None:
    """Evaluate a trained run on its test split: clean and robust accuracy under one attack, or the
    worst case over an attack suite (--suite), optionally over a list of eps (--eps-sweep)."""
    from toughen.runs import read_config

    if suite is not None and (steps is not None or restarts is not None or step_size is not None):
        raise ToughenUsageError("--suite runs each attack at its own budget; drop --steps, --restarts and "
                                "--step-size, or evaluate one attack with --attack")
    steps = 20 if steps is None else steps
    restarts = 1 if restarts is None else restarts
    if read_config(run_dir).get("kind") == "text":
        from toughen.text.cli import eval_command

        if amp is not None:
            raise ToughenUsageError("--amp applies to image runs; text attacks run in the model's precision")

        eval_command(run_dir, json_out=json_out, attack=attack, budget=budget,
                     eps=_parse_number(eps, "--eps") if eps is not None else None, norm=norm, steps=steps,
                     step_size=_parse_number(step_size, "--step-size") if step_size is not None else None,
                     n=n, seed=seed, device=device)
        return
    if budget is not None:
        raise ToughenUsageError("--budget applies to text runs only; image attacks take --eps")
    from toughen.precision import parse_amp

    amp = parse_amp(amp) if amp is not None else ("auto" if suite is not None else None)
    if suite is not None or eps_sweep is not None:
        from toughen.evaluation.run_eval import evaluate_run_suite

        if suite is not None and attack is not None:
            raise ToughenUsageError("give --suite or --attack, not both")
        sweep = [_parse_number(e.strip(), "--eps-sweep") for e in eps_sweep.split(",")] if eps_sweep else None
        result = evaluate_run_suite(
            run_dir, suite=suite, attack=attack or "pgd", steps=steps, restarts=restarts, loss=loss,
            eps=_parse_number(eps, "--eps") if eps is not None else None, norm=norm, n=n, seed=seed,
            device=device, eps_sweep=sweep, progress=not json_out, amp=amp,
        )
        if not _main_process():
            return
        if json_out:
            print(json.dumps(result))
        else:
            _print_table(str(run_dir), [{"attack": r["attack"], "robust_accuracy": r["robust_accuracy"],
                                         "seconds": r["seconds"]} for r in result["per_attack"]] + [result])
            for row in result.get("curve", []):
                out.print(f"eps {row['eps']:.4g}: robust accuracy {100 * row['robust_accuracy']:.1f}%")
        return
    result = _evaluate_run(run_dir, attack or "pgd", eps, norm, steps, step_size, restarts, loss, n, seed, device,
                           progress=not json_out, amp=amp)
    if not _main_process():
        return
    if json_out:
        print(json.dumps(result))
    else:
        _print_table(str(run_dir), [result])


def _evaluate_run(run_dir, attack, eps, norm, steps, step_size, restarts, loss, n, seed, device, progress,
                  amp=None):
    from toughen import threat
    from toughen.attacks import Attack, get_attack
    from toughen.data import load_data
    from toughen.evaluation import evaluate_attack
    from toughen.runs import load, read_config, record_evaluation
    from toughen.runtime import check_device, setup as setup_distributed, stream_seed

    cfg = read_config(run_dir)
    train_cfg = cfg["train"]
    get_attack(attack)
    eps_value = _parse_number(eps, "--eps") if eps is not None else train_cfg["eps"]
    norm = norm or train_cfg["norm"]
    bounds = tuple(cfg["data_info"]["bounds"])
    threat.check_eps(eps_value, norm, bounds)
    if steps < 0:
        raise ToughenUsageError(f"--steps must be >= 0, got {steps}")
    if restarts < 1:
        raise ToughenUsageError(f"--restarts must be >= 1, got {restarts}")
    if n is not None and n < 1:
        raise ToughenUsageError(f"--n must be >= 1, got {n}")
    options: dict[str, Any] = {"loss": loss}
    if attack == "pgd":
        # early_stop leaves robust accuracy unchanged and skips work on examples already fooled
        options.update(steps=steps, restarts=restarts, early_stop=True)
        if step_size is not None:
            options["step_size"] = check_number("--step-size", _parse_number(step_size, "--step-size"), low=0)
    if amp is not None:
        from toughen.evaluation.suite import with_amp

        (chosen,) = with_amp([Attack(attack, options)], amp)
        options = chosen.options
    dist, dev = setup_distributed(check_device(device))  # under torchrun: each rank its shard
    model = load(run_dir, device=dev)
    splits = load_data(train_cfg["data"], train_cfg["data_dir"], train_cfg["val_size"],
                       options=train_cfg.get("data_options"))
    x, y = splits.x_test[:n], splits.y_test[:n]
    result = evaluate_attack(model, dist.shard(x), dist.shard(y), Attack(attack, options), eps=eps_value, norm=norm,
                             bounds=bounds, seed=stream_seed(seed, dist.rank), progress=progress and dist.is_main)
    result = dist.merge_evaluation(result)
    robust = result.pop("robust")
    names = cfg["data_info"]["class_names"]
    result["per_class_robust_accuracy"] = {
        names[c]: robust[y == c].float().mean().item() for c in range(len(names)) if (y == c).any()
    }
    if dist.is_main:
        record_evaluation(run_dir, result)
    return result


# ----------------------------------------------------------------------------- audit

@app.command()
def audit(
    run_dir: Optional[Path] = typer.Argument(None, help="A run directory; or give --model, --data and --eps."),
    model: Optional[str] = typer.Option(None, help="MODULE:FUNCTION returning an nn.Module on [0, 1] inputs, or "
                                        "a registered model name with --weights."),
    weights: Optional[Path] = typer.Option(None, help="A safetensors file of the model's weights."),
    data: Optional[str] = typer.Option(None, help="Dataset whose test split to audit on (with --model)."),
    data_dir: Optional[Path] = typer.Option(None, help="Directory of the dataset's files."),
    eps: Optional[str] = typer.Option(None, help="Radius; default the run's training eps."),
    norm: Optional[str] = typer.Option(None, help="linf or l2; default the run's (linf for --model)."),
    n: int = typer.Option(500, help="Audit on the first N test examples (texts for a text run)."),
    queries: int = typer.Option(1000, help="Square attack query budget for the black-box check."),
    steps: int = typer.Option(20, help="PGD steps of the baseline attack (the 'more iterations' check uses 3x)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object, nothing else."),
) -> None:
    """Check a model for gradient masking: verdict "pass" (exit 0) or "suspicious" (exit 1), with the
    evidence of each check. Writes RUN_DIR/audit.json for a run directory."""
    from toughen.evaluation.audit import audit_command

    report = audit_command(
        run_dir, model_spec=model, weights=str(weights) if weights else None, data=data,
        data_dir=str(data_dir) if data_dir else None, eps=_parse_number(eps, "--eps") if eps is not None else None,
        norm=norm, n=n, n_queries=queries, steps=steps, seed=seed, device=device,
    )
    if json_out:
        print(json.dumps(report))
    else:
        size = (f"at most {report['eps']} edits of {report['attack']}" if report["norm"] == "edits"
                else f"eps = {report['eps']:.4g} ({report['norm']})")
        title = f"audit of {report['model']}: {size}, n = {report['n']}"
        table = Table(title=escape(title))
        for c in ("check", "status", "evidence"):
            table.add_column(c)
        for c in report["checks"]:
            color = "green" if c["status"] == "pass" else "red"
            table.add_row(escape(c["name"]), f"[{color}]{escape(c['status'])}[/]", escape(c["evidence"]))
        out.print(table)
        out.print(f"verdict: [bold]{report['verdict']}[/]")
    raise typer.Exit(0 if report["verdict"] == "pass" else 1)


# ----------------------------------------------------------------------------- demo

@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", parser=_out_path, help="Where the demo's runs go."),
    epochs: int = typer.Option(24, help="Adversarial-training epochs."),
    overwrite: bool = typer.Option(False, help="Replace an earlier demo in --out."),
) -> None:
    """Train small_cnn on 4,000 real MNIST digits with PGD adversarial training at eps = 0.3, and
    an undefended baseline; evaluate both under FGSM and PGD-100 on the 1,000 test digits."""
    from toughen.train import TrainConfig, train as run_train

    runs = {
        "standard": TrainConfig(recipe="standard", epochs=5, eps=0.3, eval_steps=0),
        # Precision and layout are TrainConfig's "auto": bf16 where it is faster (CPUs with AMX:
        # about 2x), fp32 channels-last where it is not. The evaluation below runs in fp32.
        "pgd": TrainConfig(recipe="pgd", epochs=epochs, eps=0.3, steps=10, eps_warmup=1 / 3, eval_steps=0),
    }
    rows = []
    for name, cfg in runs.items():
        err.print(f"[bold]training[/] {name} ({cfg.epochs} epochs)")
        summary = run_train(cfg, out_dir / name, overwrite=overwrite, progress=True)
        for label, attack, options in [("FGSM", "fgsm", {}), ("PGD-100", "pgd", {"steps": 100, "step_size": 0.01})]:
            result = _evaluate_run(out_dir / name, attack, None, None, options.get("steps", 20),
                                   str(options["step_size"]) if "step_size" in options else None, 1, "ce",
                                   None, 0, "cpu", progress=True)
            # short names, so that the numbers fit an 80-column terminal; the run's evaluations.jsonl has the full ones
            rows.append({"recipe": name, "train_seconds": summary["train_seconds"], **result, "attack": label,
                         "precision": summary["precision"]})  # the training's; evaluation runs in fp32
    _print_table(f"demo: small_cnn on mnist5k, eps = 0.3 (L-inf), {rows[0]['n']} test digits; PGD-100 with step "
                 "0.01; training precision chosen by measurement", rows)


@app.command("demo-text")
def demo_text(
    out_dir: Path = typer.Option(Path("runs/demo-text"), "--out", parser=_out_path, help="Where the text demo's runs go."),
    budget: int = typer.Option(5, help="Character edits per text for the attack (the training attack gets 1.5x as many)."),
    epochs: int = typer.Option(12),
    overwrite: bool = typer.Option(False, help="Replace an earlier demo in --out."),
) -> None:
    """Train char_cnn on the built-in prompt-injection set, standard and adversarially trained
    (A2T-style char_obfuscate augmentation); compare clean accuracy and evasion success rate."""
    from toughen.text.cli import demo as run_demo

    run_demo(out_dir, budget=budget, epochs=epochs, overwrite=overwrite)


# ----------------------------------------------------------------------------- report, sweep

@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories, or sweep directories (standing for their runs)."),
    out_file: Optional[Path] = typer.Option(
        None, "--out", parser=_out_path, help="HTML file to write; default RUN_DIR/report.html for one directory, else report.html."
    ),
    gallery: bool = typer.Option(True, help="Attack a few test inputs of each run for the example gallery."),
    gallery_n: int = typer.Option(10, help="Test inputs in each run's gallery (one per class in turn)."),
    gallery_steps: int = typer.Option(20, help="PGD steps for the gallery's adversarial examples."),
    device: str = typer.Option("cpu", help="Device for the gallery's attack."),
) -> None:
    """Write one self-contained HTML report comparing runs: summary, trade-off, curves, examples, audit."""
    from toughen.report import build_report
    from toughen.runtime import check_device

    if gallery_n < 1 or gallery_steps < 0:
        raise ToughenUsageError("--gallery-n must be >= 1 and --gallery-steps >= 0")
    check_device(device)
    if out_file is None:
        out_file = run_dirs[0] / "report.html" if len(run_dirs) == 1 else Path("report.html")
    _check_report_out(out_file)
    path = build_report(run_dirs, out_file, gallery=gallery, gallery_n=gallery_n, gallery_steps=gallery_steps,
                        device=device)
    out.print(f"wrote {path}", highlight=False)


def _check_report_out(out_file: Path) -> None:
    """The report is one HTML file: never a directory, and never one of a run's own files."""
    from toughen.runs import RUN_FILES

    if out_file.is_dir():
        raise ToughenUsageError(f"--out {out_file} is a directory; give a file name such as {out_file / 'report.html'}")
    if out_file.name in RUN_FILES and out_file.name != "report.html" and (out_file.parent / "config.yaml").is_file():
        raise ToughenUsageError(f"--out {out_file} is a file of the run in {out_file.parent}; the report would replace "
                                "it: give another name, such as report.html")
    if out_file.suffix.lower() not in (".html", ".htm"):
        raise ToughenUsageError(f"--out {out_file} does not end in .html; the report is an HTML page")


@app.command()
def sweep(
    grid: str = typer.Option(..., help='Values to sweep, e.g. "recipe=mix,trades lam=0.5,1,2 beta=1,6 eps=0.1,0.3".'),
    out_dir: Path = typer.Option(..., "--out", parser=_out_path, help="Sweep directory: one run directory per point, and report.html."),
    config: Optional[Path] = typer.Option(None, help="YAML file of TrainConfig fields shared by every point."),
    data: Optional[str] = typer.Option(None, help="Dataset: mnist5k (default), digits, mnist, cifar10."),
    data_dir: Optional[Path] = typer.Option(None, help="Directory of the dataset's files (mnist, cifar10)."),
    model: Optional[str] = typer.Option(None, help="Model: small_cnn (default), mlp, preact_resnet18, wide_resnet."),
    recipe: Optional[str] = typer.Option(None, help="Recipe of every point, unless the grid sweeps recipe."),
    eps: Optional[str] = typer.Option(None, help="Radius of every point, unless the grid sweeps eps."),
    epochs: Optional[int] = typer.Option(None),
    steps: Optional[int] = typer.Option(None, help="Attack steps during training."),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    val_size: Optional[float] = typer.Option(None, help="Validation examples: a count, or a fraction < 1."),
    eval_steps: Optional[int] = typer.Option(None, help="PGD steps for each run's test robust accuracy."),
    seed: Optional[int] = typer.Option(None),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    make_report: bool = typer.Option(True, "--report/--no-report", help="Write SWEEP_DIR/report.html at the end."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON list of the points' results, no progress."),
) -> None:
    """Train one run per point of a grid (resuming an interrupted sweep), then report them side by side."""
    from toughen.sweep import run_sweep

    base: dict[str, Any] = {}
    if config is not None:
        base.update(_read_config_file(config))
    flags = dict(
        data=data, data_dir=str(data_dir) if data_dir else None, model=model, recipe=recipe,
        eps=_parse_number(eps, "--eps") if eps is not None else None, epochs=epochs, steps=steps,
        batch_size=batch_size, lr=lr, val_size=val_size, eval_steps=eval_steps, seed=seed,
    )
    base.update({k: v for k, v in flags.items() if v is not None})
    log = None if json_out else (lambda message: err.print(message, highlight=False))
    rows = run_sweep(grid, base, out_dir, device=device, progress=not json_out, log=log)
    if make_report:
        from toughen.report import build_report

        path = build_report([out_dir], out_dir / "report.html", device=device)
        if log is not None:
            log(f"report: {path}")
    if json_out:
        print(json.dumps(rows))
    else:
        _print_table(f"sweep {out_dir}", rows)


# ----------------------------------------------------------------------------- output

def _print_table(title: str, rows: list[dict]) -> None:
    # a summary's or an evaluation's precision record shows as its label: "bf16+CL" (CL: channels-last)
    rows = [{**r, "precision": r["precision"]["label"]} if isinstance(r.get("precision"), dict) else r for r in rows]
    print_table(title, rows, ("run", "recipe", "lam", "beta", "attack", "robust_attack", "eps", "precision",
                              "clean_accuracy", "robust_accuracy", "n", "n_test", "train_seconds", "seconds", "status"),
                names=("run", "recipe", "attack", "status"), short=("eps", "lam", "beta"), missing="—")


def main() -> None:
    """The one error path: bad input (exit 2) and a failing environment (exit 1) become one line
    that says what to do; the traceback only with --debug or TOUGHEN_DEBUG=1."""
    try:
        code = app(standalone_mode=False)
    except ToughenUsageError as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 - anything else: one line, the traceback on request
        kind = _click_kind(e)
        if kind == "NoArgsIsHelpError":  # `toughen` alone: the help, as typer prints it
            print(e.format_message())
            sys.exit(0)
        if kind == "UsageError":  # a flag typer could not parse: one line too, with the hint to --help
            command = e.ctx.command_path if getattr(e, "ctx", None) is not None else "toughen"
            _fail(f"{e.format_message()} (see '{command} --help')", e.exit_code)
        if kind == "Abort":  # click turns Ctrl-C and any EOFError (a truncated file, too) into Abort
            if not isinstance(e.__cause__, EOFError):
                _fail("interrupted", 130)
            e = e.__cause__
        if os.environ.get("TOUGHEN_DEBUG") == "1":
            raise e
        message, code = explain(e)
        _fail(message + " (run with --debug for the traceback)", code)
    sys.exit(code if isinstance(code, int) else 0)  # as click's standalone mode does; typer.Exit(code) too


def _click_kind(e: BaseException) -> str | None:
    """Which of click's exceptions ``e`` is ("UsageError", "NoArgsIsHelpError", "Abort"), by class
    name: typer raises either click's or its own vendored copy of them, depending on its version."""
    names = [c.__name__ for c in type(e).__mro__]
    return next((kind for kind in ("NoArgsIsHelpError", "UsageError", "Abort") if kind in names), None)


def explain(e: BaseException) -> tuple[str, int]:
    """A one-line message and exit code for an exception that is not a ToughenUsageError: a file
    that cannot be read or written, a corrupted file, or a bug."""
    import errno
    import pickle

    from safetensors import SafetensorError

    if isinstance(e, FileNotFoundError):
        return str(e), 2
    if isinstance(e, OSError):
        hints = {errno.ENOSPC: "the disk is full: free some space and run it again",
                 errno.EROFS: "the file system is read-only: choose an --out on a writable one",
                 errno.EACCES: "permission denied: choose an --out you can write to",
                 errno.ENAMETOOLONG: "a file name is too long: choose a shorter --out"}
        where = f" ({e.filename})" if e.filename else ""
        return f"{hints.get(e.errno, e.strerror or str(e))}{where}", 1
    first_line = (str(e).strip().splitlines() or [""])[0][:200]
    if isinstance(e, (SafetensorError, pickle.UnpicklingError, EOFError)):
        return f"a file toughen read is corrupted or not what it should be ({type(e).__name__}: {first_line}); " \
               "replace it, or train the run again", 2
    if isinstance(e, yaml.YAMLError):
        return f"a YAML file is malformed: {' '.join(str(e).split())}", 2
    return f"unexpected {type(e).__name__}: {first_line}", 1


if __name__ == "__main__":
    main()
