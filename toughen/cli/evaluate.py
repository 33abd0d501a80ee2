"""`toughen eval`: a thin layer over toughen.evaluation.run_eval.evaluate_run (toughen.text.cli for text runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from toughen.cli.common import main_process, parse_number, print_rows
from toughen.console import out
from toughen.errors import ToughenUsageError


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
    suite: Optional[str] = typer.Option(None, help="Worst case over an attack suite: quick, standard, thorough or "
                                        "rand (randomized models: EOT, each point judged over 10 draws; standard "
                                        "switches to it for a model whose forward passes differ). See "
                                        "docs/evaluation.md. Replaces --attack."),
    eps_sweep: Optional[str] = typer.Option(None, help="Also a robustness curve: comma-separated eps values, "
                                            "e.g. 0.1,0.2,0.3 or 2/255,4/255,8/255."),
    certify: Optional[str] = typer.Option(None, help="Also certify the same examples (ibp, crown, or smoothing "
                                          "with --sigma) and print the bracket: certified <= true robust "
                                          "accuracy <= attacked."),
    sigma: Optional[str] = typer.Option(None, help="With --certify smoothing: the noise std."),
    amp: Optional[str] = typer.Option(None, help="auto, fp32, bf16 or fp16: the precision of the attack passes "
                                      "(who is fooled is always checked in fp32). Default: auto with --suite (the "
                                      "faster of fp32 and bf16 here, and of both memory layouts), else fp32."),
    radius: bool = typer.Option(False, "--radius", help="Per-example robust radius instead: the smallest "
                                "adversarial perturbation FAB and FAB-T find for each example (--steps, default "
                                "100; --restarts), its median and the robustness curve at every eps from one run "
                                "(at the --eps-sweep values too)."),
    targets: int = typer.Option(9, help="With --radius: FAB-T's target classes, the top ones after the true "
                                "class (0: untargeted FAB only)."),
    refine: bool = typer.Option(True, help="With --radius: at --eps and each --eps-sweep value, attack the "
                                "examples whose radius is within 10% above it with APGD-CE and APGD-T (FAB stops "
                                "a little past the boundary)."),
    surrogate: Optional[Path] = typer.Option(None, help="With --suite: a run directory of a model trained on the "
                                             "same data (standard training is best); PGD-50 on it, transferred, "
                                             "runs after the suite, and a warning says if it fools examples the "
                                             "white-box attacks missed."),
    fpr: Optional[float] = typer.Option(None, help="Binary text runs: the false-positive budget of the operating "
                                        "point (default 0.01): the threshold flagging that share of the validation "
                                        "negatives, with the detection rate, ROC AUC and the attack's evasion rate "
                                        "there."),
) -> None:
    """Evaluate a trained run on its test split: clean and robust accuracy under one attack, or the
    worst case over an attack suite (--suite), optionally over a list of eps (--eps-sweep)."""
    from toughen.runs import read_config

    if suite is not None and (steps is not None or restarts is not None or step_size is not None):
        raise ToughenUsageError("--suite runs each attack at its own budget; drop --steps, --restarts and "
                                "--step-size, or evaluate one attack with --attack")
    if radius:
        _radius(run_dir, eps=eps, norm=norm, steps=steps, restarts=restarts, targets=targets, refine=refine, n=n,
                seed=seed, device=device, json_out=json_out, eps_sweep=eps_sweep, amp=amp,
                others={"--attack": attack, "--suite": suite, "--certify": certify, "--step-size": step_size,
                        "--budget": budget, "--sigma": sigma, "--loss": None if loss == "ce" else loss,
                        "--surrogate": surrogate})
        return
    steps = 20 if steps is None else steps
    restarts = 1 if restarts is None else restarts
    if read_config(run_dir).get("kind") == "text":
        from toughen.text.cli import eval_command

        if amp is not None or surrogate is not None:
            raise ToughenUsageError("--amp and --surrogate apply to image runs; text attacks run in the model's "
                                    "precision and have no transfer check")
        eval_command(run_dir, json_out=json_out, attack=attack, budget=budget, eps=parse_number(eps, "--eps"),
                     norm=norm, steps=steps, step_size=parse_number(step_size, "--step-size"), n=n, seed=seed,
                     device=device, fpr=0.01 if fpr is None else fpr)
        return
    if budget is not None or fpr is not None:
        raise ToughenUsageError("--budget and --fpr apply to text runs only; image attacks take --eps")
    if sigma is not None and certify != "smoothing":
        raise ToughenUsageError("--sigma is the noise of randomized smoothing: give it with --certify smoothing")
    from toughen.evaluation.run_eval import evaluate_run
    from toughen.precision import parse_amp

    amp = parse_amp(amp) if amp is not None else ("auto" if suite is not None else None)
    sweep = [parse_number(e.strip(), "--eps-sweep") for e in eps_sweep.split(",")] if eps_sweep is not None else None
    result = evaluate_run(run_dir, attack=attack, suite=suite, eps=parse_number(eps, "--eps"), norm=norm, steps=steps,
                          step_size=parse_number(step_size, "--step-size"), restarts=restarts, loss=loss, n=n,
                          seed=seed, device=device, eps_sweep=sweep, amp=amp, certify=certify,
                          certify_options={"sigma": parse_number(sigma, "--sigma")} if certify == "smoothing" else None,
                          surrogate=surrogate, progress=not json_out)
    if not main_process():
        return
    if json_out:
        print(json.dumps(result))
        return
    if suite is not None or sweep is not None:  # a row per attack of the suite, then the worst case
        print_rows(str(run_dir), [{"attack": r["attack"], "robust_accuracy": r["robust_accuracy"],
                                   "seconds": r["seconds"]} for r in result["per_attack"]] + [result])
        for row in result.get("curve", []):
            out.print(f"eps {row['eps']:.4g}: robust accuracy {100 * row['robust_accuracy']:.1f}%")
    else:
        print_rows(str(run_dir), [{k: v for k, v in result.items() if k not in ("bracket", "certified")}])
    for w in result.get("warnings", []):  # the indicators of attack failure that fired
        out.print(f"[bold yellow]warning:[/] {w['indicator']} ({w['attack']}): {escape(w['evidence'])}",
                  highlight=False)
    for row in result.get("curve", []):
        for w in row.get("warnings", []):
            out.print(f"[bold yellow]warning[/] at eps {row['eps']:.4g}: {w['indicator']} ({w['attack']}): "
                      f"{escape(w['evidence'])}", highlight=False)
    if "suite_reason" in result:
        out.print(f"suite rand, not standard: {result['suite_reason']}", highlight=False)
    if "expected_robust_accuracy" in result:
        out.print(f"over {result['draws']} draws per point: accuracy counts an example only if every draw is right "
                  f"(worst of {result['draws']}); the expected accuracy (mean over draws) is "
                  f"{100 * result['expected_clean_accuracy']:.1f}% clean, "
                  f"{100 * result['expected_robust_accuracy']:.1f}% robust", highlight=False)
    if "bracket" in result:
        b = result["bracket"]
        out.print(f"certified {100 * b['certified_accuracy']:.1f}% <= true robust accuracy <= "
                  f"attacked {100 * b['attacked_accuracy']:.1f}% ({result['certified']['method']}, "
                  f"{result['certified']['seconds']:.1f} s): {b['note']}", highlight=False)
        if b["contradictions"]:
            out.print(f"[bold red]{b['contradictions']} certified examples were fooled by the attack: a certificate "
                      "or the attack is wrong; please report it[/]")


def _radius(run_dir: Path, *, eps, norm, steps, restarts, targets, refine, n, seed, device, json_out, eps_sweep,
            amp, others) -> None:
    """`toughen eval RUN_DIR --radius`: toughen.evaluation.run_eval.radius_run, printed."""
    given = [flag for flag, value in others.items() if value is not None]
    if given:
        raise ToughenUsageError(f"--radius runs FAB's minimal search on its own; drop {', '.join(given)}")
    from toughen.evaluation.run_eval import radius_run
    from toughen.precision import parse_amp

    sweep = [parse_number(e.strip(), "--eps-sweep") for e in eps_sweep.split(",")] if eps_sweep is not None else None
    result = radius_run(run_dir, eps=parse_number(eps, "--eps"), norm=norm, eps_sweep=sweep, n=n, seed=seed,
                        device=device, steps=100 if steps is None else steps,
                        restarts=1 if restarts is None else restarts, n_target_classes=targets, refine=refine,
                        amp=parse_amp(amp) if amp is not None else None, progress=not json_out)
    if json_out:
        print(json.dumps(result))
        return
    r = result["radius"]
    print_rows(str(run_dir), [{k: v for k, v in result.items() if k != "radius"}])
    median = "none found for half the examples" if r["median"] is None else f"{r['median']:.4g}"
    out.print(f"median radius ({result['norm']}): {median}; misclassified clean (radius 0): {r['misclassified']}; "
              f"no adversarial input found: {r['none_found']}", highlight=False)
    shown = set(sweep or []) | {result["eps"]}
    if not sweep:  # a few points of the grid: a tenth of the way each
        grid = [row["eps"] for row in r["curve"]]
        shown |= set(grid[::max(1, len(grid) // 10)])
    for row in r["curve"]:
        if row["eps"] in shown:
            out.print(f"eps {row['eps']:.4g}: robust accuracy {100 * row['robust_accuracy']:.1f}% "
                      "(radius > eps; an upper bound, like any attack's)", highlight=False)
