"""Exact resume after SIGKILL, safe stop on a NaN loss, and robust model selection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toughen.runs import load, read_jsonl
from toughen.train import TIMING_FIELDS, TrainConfig, TrainingDiverged, train
from toughen.train.checkpoint import load_checkpoint
from toughen.train.recipes import RECIPES, StepOutput

# free carries a perturbation between batches and the guard probes every 10 batches: the
# checkpoint must restore both, besides the model, optimizer and every generator.
ARGS = ["--data", "digits", "--recipe", "free", "--eps", "0.1", "--epochs", "5", "--batch-size", "32",
        "--free-replays", "2", "--steps", "2", "--guard-every", "10", "--eval-steps", "3", "--seed", "3",
        "--lr-schedule", "cosine", "--json", "--amp", "fp32", "--channels-last"]
# --awp perturbs and restores the weights within every batch (trades: its loss recomputed on the clean
# and the adversarial batch), and --ema averages them after each step. (One variant with both: each
# costs about 30 s here.)
VARIANTS = {
    "free": ARGS,
    "trades-awp-ema": ["--data", "digits", "--recipe", "trades", "--awp", "0.005", "--ema", "0.99", "--eps", "0.1",
                       "--epochs", "5", "--batch-size", "32", "--steps", "2", "--eval-steps", "3", "--seed", "3",
                       "--lr-schedule", "cosine", "--json", "--amp", "fp32", "--channels-last"],
}
# (precision given, not "auto": the two runs are separate processes, and each would time its own;
# that a resumed run keeps its recorded choice is tested below)
SUMMARY_TIMING = ("train_seconds", "step_seconds", "guard_seconds", "val_seconds", "wall_seconds_this_process",
                  "resumed")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "toughen", "train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in read_jsonl(run / "metrics.jsonl")]


def _summary(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in SUMMARY_TIMING}


@pytest.mark.parametrize("variant", VARIANTS)
def test_sigkill_mid_epoch_then_resume_ends_identical(tmp_path, variant):
    args = VARIANTS[variant]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # the uninterrupted run beside the one to kill: one thread each, so on two cores neither waits
    uninterrupted = subprocess.Popen(_cli("--out", str(whole), *args), env=_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
    proc = subprocess.Popen(_cli("--out", str(killed), *args), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").is_file() and len(read_jsonl(killed / "metrics.jsonl")) >= 2:
            break
        time.sleep(0.01)
    time.sleep(0.05)  # into the third epoch
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    done = load_checkpoint(killed)["epoch"]
    assert 1 <= done < 5  # the kill may land before the second epoch's checkpoint is renamed into place

    out = subprocess.run(_cli("--resume", str(killed), "--json"), check=True, env=_env(), capture_output=True,
                         text=True)
    assert json.loads(out.stdout)["resumed"] is True
    _, err = uninterrupted.communicate()
    assert uninterrupted.returncode == 0, err
    assert _metrics(killed) == _metrics(whole)
    assert _summary(killed) == _summary(whole)
    names = ["model.safetensors", "model_last.safetensors"] + (["model_raw.safetensors"] if "--ema" in args else [])
    for name in names:
        a, b = load_file(str(whole / name)), load_file(str(killed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def run_cli(args, capsys):
    from toughen.cli import main

    old, sys.argv = sys.argv, ["toughen", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_resume_refuses_a_finished_run_and_other_flags(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(data="digits", recipe="standard", epochs=1, eval_steps=0, val_attack_steps=1), run,
          progress=False)
    code, _, stderr = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and "nothing to resume" in stderr
    code, _, stderr = run_cli(["train", "--resume", str(run), "--epochs", "3"], capsys)
    assert code == 2 and "no --out, --config or training flags" in stderr


_STATE = {"epoch": 1}


def _nan_from_epoch_2(model, x, y, ctx):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    return StepOutput(loss * float("nan") if _STATE["epoch"] >= 2 else loss)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(RECIPES._entries, "nan_from_2", _nan_from_epoch_2)
    monkeypatch.setitem(_STATE, "epoch", 1)
    cfg = TrainConfig(data="digits", recipe="nan_from_2", epochs=3, eval_steps=0, val_attack_steps=1)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 0.*checkpoint\.pt.*lower --lr"):
        train(cfg, tmp_path / "run", progress=False, on_epoch=lambda row: _STATE.update(epoch=row["epoch"] + 1))
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1


def test_best_epoch_is_the_model_and_the_last_is_kept_beside_it(tmp_path, digits):
    run = tmp_path / "run"
    summary = train(TrainConfig(data="digits", recipe="pgd", eps=0.1, epochs=4, steps=2, lr=2e-3, eval_steps=0,
                                val_attack_steps=2), run, progress=False)
    rows = read_jsonl(run / "metrics.jsonl")
    best = max(rows, key=lambda r: (r["val_robust_accuracy"], r["val_clean_accuracy"]))
    assert summary["selected_epoch"] == best["epoch"] == rows[-1]["best_epoch"]
    model = load(run)
    clean = (model(digits.x_val).argmax(1) == digits.y_val).float().mean().item()
    assert clean == pytest.approx(best["val_clean_accuracy"])
    assert (run / "model_last.safetensors").is_file()
    assert summary["cost_multiplier"] == pytest.approx(3.0)
    assert all(r["seconds"] > 0 and r["cost_multiplier"] == pytest.approx(3.0) for r in rows)


def test_patience_stops_when_validation_stops_improving(tmp_path):
    # A learning rate so small that nothing changes: no epoch is better than the first.
    cfg = TrainConfig(data="digits", recipe="standard", eps=1e-4, epochs=6, lr=1e-12, lr_schedule="constant",
                      eval_steps=0, val_attack_steps=1, patience=2)
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["epochs_run"] == 3 and summary["stopped_early"] and summary["selected_epoch"] == 1


class _Stop(Exception):
    pass


@pytest.mark.parametrize("recipe", ["atta", "atta_free"])
def test_atta_resumes_its_stored_perturbations_exactly(tmp_path, recipe):
    """atta's and atta_free's memory (one perturbation per training image) is in the checkpoint:
    a run stopped after an epoch and resumed ends with the weights of one never stopped."""
    cfg = TrainConfig(data="digits", recipe=recipe, eps=0.1, epochs=3, batch_size=64, eval_steps=0,
                      val_attack_steps=1, seed=1)
    train(cfg, tmp_path / "whole", progress=False)

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, tmp_path / "stopped", progress=False, on_epoch=stop_after_first)
    assert load_checkpoint(tmp_path / "stopped")["recipe_state"]["atta_seen"].all()
    train(cfg, tmp_path / "stopped", progress=False, resume=True)
    whole = load_file(tmp_path / "whole" / "model_last.safetensors")
    resumed = load_file(tmp_path / "stopped" / "model_last.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path):
    """"auto" is settled once and recorded in config.yaml; a resumed run reads the record instead
    of timing again (a new probe could choose otherwise, and the run would not end as one
    never interrupted)."""
    import yaml

    cfg = TrainConfig(data="digits", recipe="standard", epochs=2, eval_steps=0, val_attack_steps=1)
    assert (cfg.amp, cfg.channels_last) == ("auto", "auto")

    def stop_after_first(row):
        raise _Stop

    run = tmp_path / "run"
    with pytest.raises(_Stop):
        train(cfg, run, progress=False, on_epoch=stop_after_first)
    doc = yaml.safe_load((run / "config.yaml").read_text())
    recorded = doc["precision"]
    assert recorded["chosen_by"] == "measured" and recorded["label"] in recorded["timings_ms"]
    # A record the probe would not produce here (fp32 wins no probe by 10x), to see which one is used.
    doc["precision"] = {**recorded, "amp": None, "channels_last": False, "label": "fp32",
                        "timings_ms": {"fp32": 1.0, "fp32+CL": 10.0}}
    (run / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    summary = train(cfg, run, progress=False, resume=True)
    assert summary["precision"] == doc["precision"]
