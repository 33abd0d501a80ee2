"""`toughen audit`: a thin layer over toughen.evaluation.audit, and its table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from toughen.cli.common import parse_number
from toughen.console import out


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
    active_test: bool = typer.Option(False, "--active-test", help="Also run the binarization test (Zimmermann et al. "
                                     "2022): do PGD, APGD and Square find adversarial examples known to exist?"),
    active_n: int = typer.Option(20, help="Test examples (cases) of --active-test."),
    surrogate: Optional[Path] = typer.Option(None, help="A run directory of a model trained on the same data "
                                             "(standard training is best): the transfer_failure check attacks it "
                                             "and tries its points on the audited model (skipped without it)."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object, nothing else."),
) -> None:
    """Check a model for gradient masking: verdict "pass" (exit 0) or "suspicious" (exit 1), with the
    evidence of each check. Writes RUN_DIR/audit.json for a run directory. --active-test adds the
    binarization test's pass fractions (which leave the verdict as it is); --surrogate RUN runs the
    transfer_failure check, which is skipped without it."""
    from toughen.evaluation.audit import audit_command

    report = audit_command(
        run_dir, model_spec=model, weights=str(weights) if weights else None, data=data,
        data_dir=str(data_dir) if data_dir else None, eps=parse_number(eps, "--eps"),
        norm=norm, n=n, n_queries=queries, steps=steps, seed=seed, device=device,
        active_n=active_n if active_test else None, surrogate=surrogate,
    )
    if json_out:
        print(json.dumps(report))
    else:
        size = (f"at most {report['eps']} edits of {report['attack']}" if report["norm"] == "edits"
                else f"eps = {report['eps']:.4g} ({report['norm']})")
        table = Table(title=escape(f"audit of {report['model']}: {size}, n = {report['n']}"))
        for c in ("check", "status", "evidence"):
            table.add_column(c)
        for c in report["checks"]:
            color = {"pass": "green", "skipped": "yellow"}.get(c["status"], "red")
            table.add_row(escape(c["name"]), f"[{color}]{escape(c['status'])}[/]", escape(c["evidence"]))
        out.print(table)
        if "active_test" in report:
            out.print(_active_table(report["active_test"]))
        out.print(f"verdict: [bold]{report['verdict']}[/]")
    raise typer.Exit(0 if report["verdict"] == "pass" else 1)


def _active_table(result: dict) -> Table:
    """The binarization test's pass fraction per attack, and the random baseline."""
    valid = result["n_valid"]
    table = Table(title=escape(f"binarization test: {valid}/{result['n_cases']} valid cases, "
                               f"features at {result['feature_layer']}"))
    for c in ("attack", "passed"):
        table.add_column(c)

    def share(fraction):
        return "-" if fraction is None else f"{round(fraction * valid)}/{valid} ({100 * fraction:.1f}%)"

    for label, fraction in result["pass_fraction"].items():
        table.add_row(escape(label), share(fraction))
    table.add_row("random points (baseline)", share(result["random_pass_fraction"]))
    return table
