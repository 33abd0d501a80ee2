"""`toughen sweep`: a grid of training runs through toughen.sweep.run_sweep, then their report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from toughen.cli.common import given, out_path, parse_number, print_rows, read_config_file
from toughen.console import err


def sweep(
    grid: str = typer.Option(..., help='Values to sweep, e.g. "recipe=mix,trades lam=0.5,1,2 beta=1,6 eps=0.1,0.3".'),
    out_dir: Path = typer.Option(..., "--out", parser=out_path, help="Sweep directory: one run directory per point, and report.html."),
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
        base.update(read_config_file(config))
    base.update(given(
        data=data, data_dir=str(data_dir) if data_dir else None, model=model, recipe=recipe,
        eps=parse_number(eps, "--eps"), epochs=epochs, steps=steps,
        batch_size=batch_size, lr=lr, val_size=val_size, eval_steps=eval_steps, seed=seed,
    ))
    log = None if json_out else (lambda message: err.print(message, highlight=False))
    rows = run_sweep(grid, base, out_dir, device=device, progress=not json_out, log=log)
    if make_report:  # written here: toughen.sweep and toughen.report, one layer, do not import each other
        from toughen.report import build_report

        path = build_report([out_dir], out_dir / "report.html", device=device)
        if log is not None:
            log(f"report: {path}")
    if json_out:
        print(json.dumps(rows))
    else:
        print_rows(f"sweep {out_dir}", rows)
