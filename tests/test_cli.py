"""The command line end to end on digits, and every usage error of the foundation issue."""

import json
import subprocess
import sys

import pytest
import torch

import toughen
from conftest import run_cli

TRAIN = ["train", "--data", "digits", "--epochs", "1", "--steps", "2", "--eval-steps", "3", "--eps", "0.1"]




@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    cmd = [sys.executable, "-m", "toughen", *TRAIN, "--recipe", "pgd", "--out", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_train_writes_a_complete_run_directory(trained_run):
    out, proc = trained_run
    summary = json.loads(proc.stdout)  # --json: exactly one JSON object on stdout
    for key in ("clean_accuracy", "robust_accuracy", "eps", "norm", "recipe", "epochs", "train_seconds"):
        assert key in summary
    assert summary["eps"] == 0.1 and summary["recipe"] == "pgd"
    assert (out / "config.yaml").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    for key in ("loss", "train_robust_accuracy", "val_clean_accuracy", "val_robust_accuracy", "seconds"):
        assert key in rows[0]
    assert "epoch 1/1" not in proc.stderr, "no progress bars under --json"


def test_load_returns_the_trained_model_in_eval_mode(trained_run, digits):
    out, proc = trained_run
    model = toughen.load(out)
    assert not model.training
    with torch.no_grad():
        acc = (model(digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    assert abs(acc - json.loads(proc.stdout)["clean_accuracy"]) < 1e-6


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_eval_json_prints_exactly_one_object(trained_run, capsys, attack):
    out, _ = trained_run
    code, stdout, _ = run_cli(["eval", str(out), "--attack", attack, "--steps", "5", "--n", "50", "--json"], capsys)
    assert code == 0
    result = json.loads(stdout)
    for key in ("clean_accuracy", "robust_accuracy", "attack", "eps", "norm", "n"):
        assert key in result
    assert result["n"] == 50 and result["eps"] == 0.1 and result["attack"].startswith(attack)
    assert result["robust_accuracy"] <= result["clean_accuracy"]


def test_eval_accepts_eps_as_a_fraction(trained_run, capsys):
    out, _ = trained_run
    code, stdout, _ = run_cli(["eval", str(out), "--eps", "8/255", "--steps", "2", "--n", "20", "--json"], capsys)
    assert code == 0 and abs(json.loads(stdout)["eps"] - 8 / 255) < 1e-12


def test_a_run_and_a_suite_evaluation_say_which_precision_ran(trained_run, capsys):
    """The default is "auto": the choice and the probe's timings are in config.yaml and
    summary.json, and in the JSON of `eval --suite`; `--amp fp32` fixes fp32."""
    import yaml

    out, proc = trained_run
    summary = json.loads(proc.stdout)
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["train"]["amp"] == "auto" and recorded["train"]["channels_last"] == "auto"
    assert summary["precision"] == recorded["precision"]
    assert summary["precision"]["chosen_by"] == "measured" and "fp32" in summary["precision"]["timings_ms"]
    suite = ["eval", str(out), "--suite", "quick", "--n", "30", "--json"]
    code, stdout, _ = run_cli(suite, capsys)
    assert code == 0
    result = json.loads(stdout)
    assert result["precision"]["chosen_by"] == "measured" and result["amp"] == result["precision"]["amp"]
    code, stdout, _ = run_cli([*suite, "--amp", "fp32"], capsys)
    assert code == 0 and json.loads(stdout)["amp"] is None
    code, _, stderr = run_cli([*suite, "--amp", "int8"], capsys)
    assert code == 2 and "choose auto, fp32, bf16 or fp16" in stderr


USAGE_ERRORS = [
    (["--data", "imagenet"], "unknown dataset 'imagenet'; choose one of: cifar10, digits,"),
    (["--model", "resnet50"], "unknown model 'resnet50'; choose one of"),
    (["--recipe", "magic"], "unknown recipe 'magic'; choose one of"),
    (["--eps", "8"], "did you mean 8/255?"),
    (["--eps", "-0.1"], "eps must be >= 0"),
    (["--steps", "-3"], "steps must be a whole number >= 0"),
    (["--data", "mnist", "--data-dir", "/no/such/dir"], "does not exist"),
]


@pytest.mark.parametrize("extra,message", USAGE_ERRORS)
def test_train_usage_errors_exit_2_and_write_nothing(extra, message, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["train", "--data", "digits", "--out", str(out), *extra], capsys)
    assert code == 2
    assert message in " ".join(stderr.split())
    assert len(stderr.strip().splitlines()) == 1, "one line, no traceback"
    assert not out.exists(), "nothing half-written"


def test_existing_output_directory_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, stderr = run_cli([*TRAIN, "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    code, _, _ = run_cli([*TRAIN, "--steps", "1", "--eval-steps", "1", "--out", str(out), "--overwrite", "--json"], capsys)
    assert code == 0
    assert (out / "notes.txt").read_text() == "mine", "--overwrite replaces only toughen's files"
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "extra,message",
    [(["--attack", "deepfool"], "unknown attack 'deepfool'"), (["--eps", "8"], "8/255"),
     (["--steps", "-1"], "--steps must be >= 0")],
)
def test_eval_usage_errors_exit_2(trained_run, extra, message, capsys):
    out, _ = trained_run
    code, stdout, stderr = run_cli(["eval", str(out), *extra, "--json"], capsys)
    assert code == 2 and message in stderr and stdout == ""


def test_eval_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    code, _, stderr = run_cli(["eval", str(tmp_path)], capsys)
    assert code == 2 and "not a toughen run directory" in stderr
