"""`toughen certify`: a thin layer over toughen.evaluation.run_eval.certify_run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from toughen.cli.common import parse_number, print_rows
from toughen.console import out


def certify(
    run_dir: Path = typer.Argument(..., help="A run directory written by `toughen train`."),
    method: str = typer.Option("ibp", help="ibp (interval bounds, fast), crown (linear relaxation, tighter for "
                               "most models, slower) or smoothing (randomized smoothing, L2; needs --sigma)."),
    eps: Optional[str] = typer.Option(None, help="Radius to certify; default the run's training eps."),
    norm: Optional[str] = typer.Option(None, help="linf or l2; default the run's."),
    n: Optional[int] = typer.Option(None, help="Certify the first N test examples."),
    sigma: Optional[str] = typer.Option(None, help="smoothing: the noise std (the one the model trained with)."),
    samples: int = typer.Option(1000, help="smoothing: noisy samples per example for the estimate (n)."),
    n0: int = typer.Option(100, help="smoothing: noisy samples per example that choose the class."),
    alpha: float = typer.Option(0.001, help="smoothing: the certificate fails with probability at most alpha."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object, nothing else."),
) -> None:
    """Prove which test examples no input of the threat ball can change: certified accuracy, a lower
    bound on the true robust accuracy (an attack gives the upper bound; `toughen eval --certify`)."""
    from toughen.evaluation.run_eval import certify_run

    options = {"sigma": parse_number(sigma, "--sigma"), "n0": n0, "samples": samples, "alpha": alpha} \
        if method == "smoothing" else {}
    result = certify_run(run_dir, method=method, eps=parse_number(eps, "--eps"), norm=norm, n=n, seed=seed,
                         device=device, progress=not json_out, **options)
    result.pop("certified")
    result.pop("radius", None)
    result.pop("prediction", None)
    if json_out:
        print(json.dumps(result))
        return
    print_rows(str(run_dir), [{k: result[k] for k in ("method", "eps", "norm", "n", "clean_accuracy",
                                                       "certified_accuracy", "seconds")}])
    if method == "smoothing":
        out.print(f"abstained on {100 * result['abstain_rate']:.1f}%")
        for row in result["curve"]:
            out.print(f"L2 radius {row['radius']:.3g}: certified accuracy {100 * row['certified_accuracy']:.1f}%")
