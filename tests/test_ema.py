"""The EMA of the weights (--ema): its formula, BatchNorm statistics, the run's files, exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from toughen.errors import ToughenUsageError
from toughen.runs import load, read_jsonl
from toughen.train import TIMING_FIELDS, TrainConfig, train
from toughen.train.checkpoint import load_checkpoint
from toughen.train.ema import EMA

SUMMARY_TIMING = ("train_seconds", "step_seconds", "guard_seconds", "val_seconds", "wall_seconds_this_process",
                  "resumed")


def _closed_form(weights: list[torch.Tensor], decays: list[float]) -> torch.Tensor:
    """sum_i c_i w_i with c_0 = prod_j d_j and c_i = (1 - d_{i-1}) prod_{j >= i} d_j: the EMA written out."""
    k = len(decays)
    total = math.prod(decays) * weights[0]
    for i in range(1, k + 1):
        total = total + (1 - decays[i - 1]) * math.prod(decays[i:]) * weights[i]
    return total


@pytest.mark.parametrize("warmup", [True, False])
def test_after_k_steps_the_average_is_the_closed_form_weighted_sum(warmup):
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    ema = EMA(model, decay=0.9, warmup=warmup)
    seen = [{k: v.clone() for k, v in model.state_dict().items()}]
    for _ in range(100):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
    decays = [ema.decay_at(t) for t in range(100)]
    if warmup:  # (1 + t) / (10 + t) until it reaches the decay
        assert decays[:3] == pytest.approx([0.1, 2 / 11, 3 / 12]) and decays[-1] == 0.9 and ema.updates == 100
    else:
        assert decays == [0.9] * 100
    for name in ("weight", "bias"):
        assert torch.allclose(ema.shadow[name], _closed_form([s[name] for s in seen], decays), rtol=0, atol=1e-12)


def test_batchnorm_statistics_are_averaged_like_the_weights_and_the_counter_copied():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double().train()
    ema = EMA(model, decay=0.8)
    seen = [{k: v.clone() for k, v in model.state_dict().items()}]
    for _ in range(6):
        model(torch.randn(16, 4, dtype=torch.float64) * 3 + 1)  # moves the running statistics
        ema.update(model)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
    decays = [ema.decay_at(t) for t in range(6)]
    for name in ("1.running_mean", "1.running_var"):
        expected = _closed_form([s[name] for s in seen], decays)
        assert torch.allclose(ema.shadow[name], expected, rtol=0, atol=1e-12)
        assert not torch.allclose(ema.shadow[name], model.state_dict()[name])  # an average, not the last value
    assert ema.shadow["1.num_batches_tracked"].item() == 6


def test_applied_swaps_the_average_in_and_the_weights_back_exactly():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied(model) as raw:
        assert all(torch.equal(model.state_dict()[k], ema.shadow[k]) for k in before)
        assert all(torch.equal(raw[k], before[k]) for k in before)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


@pytest.mark.parametrize("bad", [1, 1.5, -0.1, True, "0.9"])
def test_ema_is_checked_to_be_a_decay(bad):
    with pytest.raises(ToughenUsageError, match="ema"):
        TrainConfig(data="digits", ema=bad).validate()
    TrainConfig(data="digits", ema=0).validate()  # off


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in read_jsonl(run / "metrics.jsonl")]


def _summary(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in SUMMARY_TIMING}


# small and fixed: pgd with 2 steps on digits, fp32 contiguous so runs in one process agree exactly
def _cfg(**changes) -> TrainConfig:
    values = dict(data="digits", recipe="pgd", eps=0.1, epochs=3, steps=2, batch_size=64, lr=2e-3,
                  eval_steps=2, val_attack_steps=2, amp=None, channels_last=False, seed=1)
    return TrainConfig(**{**values, **changes})


def test_the_average_does_not_change_training_and_off_writes_nothing_new(tmp_path):
    """The average only reads the weights: an EMA run's first epoch trains the weights of the run
    without it, bit for bit. (Later epochs differ: validating another model draws the attack
    generator differently.) Off (None or 0), nothing of the EMA is written."""
    plain = tmp_path / "plain"
    train(_cfg(select="last", epochs=1), plain, progress=False)
    train(_cfg(select="last", epochs=1, ema=0), tmp_path / "zero", progress=False)
    with_ema = tmp_path / "ema"
    summary = train(_cfg(select="last", epochs=1, ema=0.9), with_ema, progress=False)
    assert _same(_weights(plain / "model.safetensors"), _weights(with_ema / "model_raw.safetensors"))
    assert _same(_weights(plain / "model.safetensors"), _weights(tmp_path / "zero" / "model.safetensors"))
    assert _metrics(plain) == _metrics(tmp_path / "zero")
    assert not (plain / "model_raw.safetensors").exists() and "ema" not in load_checkpoint(plain)
    assert "ema" not in _summary(plain) and summary["ema"] == 0.9
    training = ("loss", "train_robust_accuracy", "forward_passes", "backward_passes")
    assert [{k: r[k] for k in training} for r in _metrics(plain)] == \
        [{k: r[k] for k in training} for r in _metrics(with_ema)]
    # the average is not the last iterate
    assert not _same(_weights(with_ema / "model.safetensors"), _weights(with_ema / "model_raw.safetensors"))


def test_the_saved_model_is_the_average_and_model_raw_the_trained_weights(tmp_path, digits):
    run = tmp_path / "run"
    summary = train(_cfg(epochs=4, ema=0.8), run, progress=False)
    ckpt = load_checkpoint(run)
    best = ckpt["best"]
    assert summary["selected_epoch"] == best["epoch"]
    assert _same(_weights(run / "model.safetensors"), best["weights"])
    assert _same(_weights(run / "model_raw.safetensors"), best["raw"])
    # the last epoch's files: model_last is its average, the checkpoint keeps the raw weights to train on
    assert _same(_weights(run / "model_last.safetensors"), ckpt["ema"]["shadow"])
    assert not _same(ckpt["model"], ckpt["ema"]["shadow"])
    # validation, selection and the test numbers are the average's
    model = load(run)
    rows = read_jsonl(run / "metrics.jsonl")
    chosen = next(r for r in rows if r["epoch"] == best["epoch"])
    clean = (model(digits.x_val).argmax(1) == digits.y_val).float().mean().item()
    assert clean == pytest.approx(chosen["val_clean_accuracy"])
    test_clean = (model(digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    assert test_clean == pytest.approx(summary["clean_accuracy"])


class _Stop(Exception):
    pass


def test_a_run_stopped_after_an_epoch_resumes_exactly(tmp_path):
    cfg = _cfg(ema=0.9)
    train(cfg, tmp_path / "whole", progress=False)

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, tmp_path / "stopped", progress=False, on_epoch=stop_after_first)
    assert load_checkpoint(tmp_path / "stopped")["ema"]["updates"] > 0
    train(cfg, tmp_path / "stopped", progress=False, resume=True)
    assert _metrics(tmp_path / "stopped") == _metrics(tmp_path / "whole")
    assert _summary(tmp_path / "stopped") == _summary(tmp_path / "whole")
    for name in ("model.safetensors", "model_last.safetensors", "model_raw.safetensors"):
        assert _same(_weights(tmp_path / "whole" / name), _weights(tmp_path / "stopped" / name)), name


# free takes its optimizer steps itself (ctx.update), m per batch: each must update the average once
ARGS = ["--data", "digits", "--recipe", "free", "--eps", "0.1", "--epochs", "4", "--batch-size", "32",
        "--free-replays", "2", "--steps", "2", "--guard-every", "10", "--eval-steps", "3", "--seed", "3",
        "--lr-schedule", "cosine", "--json", "--amp", "fp32", "--channels-last", "--ema", "0.99"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "toughen", "train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_cli_ema_run_killed_mid_epoch_resumes_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # the uninterrupted run beside the one to kill: one thread each, so on two cores neither waits
    uninterrupted = subprocess.Popen(_cli("--out", str(whole), *ARGS), env=_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(_cli("--out", str(killed), *ARGS), env=_env(), stdout=subprocess.DEVNULL,
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
    assert 1 <= load_checkpoint(killed)["epoch"] < 4

    out, err = uninterrupted.communicate()
    assert uninterrupted.returncode == 0, err
    assert json.loads(out)["ema"] == 0.99
    assert {"model.safetensors", "model_raw.safetensors", "model_last.safetensors"} <= {p.name for p in whole.iterdir()}
    n_train = yaml.safe_load((whole / "config.yaml").read_text())["data_info"]["n_train"]
    steps = 4 * math.ceil(n_train / 32) * 2  # epochs x batches x replays
    assert load_checkpoint(whole)["ema"]["updates"] == steps

    subprocess.run(_cli("--resume", str(killed), "--json"), check=True, env=_env(), capture_output=True)
    assert _metrics(killed) == _metrics(whole)
    assert _summary(killed) == _summary(whole)
    for name in ("model.safetensors", "model_last.safetensors", "model_raw.safetensors"):
        assert _same(_weights(whole / name), _weights(killed / name)), name


def test_text_runs_take_the_same_option(tmp_path):
    from toughen.text.injection import generate
    from toughen.text.train import TextTrainConfig, train_text

    texts, labels = generate(120, seed=3)
    data = tmp_path / "pi.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(texts, labels)))
    cfg = dict(data=f"jsonl:{data}", recipe="standard", epochs=1, budget=1, val_n=10, eval_n=10)
    train_text(TextTrainConfig(**cfg), tmp_path / "plain", progress=False)
    train_text(TextTrainConfig(**cfg, ema=0.9), tmp_path / "ema", progress=False)
    # the trained weights are those of the run without EMA; the saved model is their average
    assert _same(_weights(tmp_path / "plain" / "model.safetensors"), _weights(tmp_path / "ema" / "model_raw.safetensors"))
    assert not _same(_weights(tmp_path / "ema" / "model.safetensors"),
                     _weights(tmp_path / "ema" / "model_raw.safetensors"))
    with pytest.raises(ToughenUsageError, match="ema"):
        TextTrainConfig(**cfg, ema=1.0).validate()
