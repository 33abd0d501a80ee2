"""The gradient-masking audit: deliberately masked models are flagged, an honest robust one passes."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from toughen.evaluation.audit import audit, load_factory_model
from conftest import Quantized, Saturated, run_cli

SETTINGS = dict(eps=0.1, steps=10, n_queries=200)
CHECKS = {"deterministic", "outputs_are_logits", "gradients_finite_nonzero", "single_step_not_stronger",
          "more_iterations_not_weaker", "unbounded_attack_succeeds", "black_box_not_stronger", "silent_success",
          "incomplete_optimization", "transfer_failure", "accuracy_falls_with_eps"}


class Randomized(nn.Module):
    """Gaussian noise on every input: a different model at each call."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model((x + 0.2 * torch.randn_like(x)).clamp(0, 1))


def _failed(report):
    return {c["name"] for c in report["checks"] if c["status"] != "pass"}


@pytest.fixture(scope="module")
def batch(test_batch):
    x, y = test_batch
    return x[:64], y[:64]


def test_an_honest_robust_model_passes(robust_model, batch):
    report = audit(robust_model, *batch, **SETTINGS)
    assert {c["name"] for c in report["checks"]} == CHECKS
    assert all(c["status"] in ("pass", "suspicious", "skipped") and c["evidence"] for c in report["checks"])
    assert [c["name"] for c in report["checks"] if c["status"] == "skipped"] == ["transfer_failure"]  # no surrogate
    assert report["verdict"] == "pass", _failed(report)
    assert report["robust_accuracy"]["pgd-10"] < report["robust_accuracy"]["clean"]


@pytest.mark.parametrize("mask,expected", [
    (Quantized, "gradients_finite_nonzero"),
    (Saturated, "gradients_finite_nonzero"),
    (Randomized, "deterministic"),
])
def test_masked_models_are_flagged(mask, expected, robust_model, batch):
    torch.manual_seed(0)  # Randomized draws from the global generator
    report = audit(mask(robust_model), *batch, **SETTINGS)
    assert report["verdict"] == "suspicious"
    assert expected in _failed(report)


def test_a_model_that_returns_probabilities_is_flagged(robust_model, batch):
    report = audit(nn.Sequential(robust_model, nn.Softmax(dim=1)), *batch, **SETTINGS)
    assert "outputs_are_logits" in _failed(report)


# ----------------------------------------------------------------------------- command line


FAST = ["--n", "64", "--steps", "10", "--queries", "200", "--json"]


def test_audit_of_a_factory_model_gates_a_pipeline(robust_model, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "robust.safetensors"
    save_file({k: v.contiguous() for k, v in robust_model.state_dict().items()}, str(weights))
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "from toughen.data import load_data\n"
        "from toughen.models import build_model\n"
        "from toughen.runs import load_weights\n\n"
        "def _robust():\n"
        "    s = load_data('digits')\n"
        "    m = build_model('small_cnn', s.input_shape, s.num_classes, s.mean, s.std)\n"
        f"    return load_weights(m, {str(weights)!r})\n\n"
        "def honest():\n"
        "    return _robust()\n\n"
        "class Scaled(torch.nn.Module):\n"
        "    def __init__(self, m):\n"
        "        super().__init__()\n"
        "        self.m = m\n\n"
        "    def forward(self, x):\n"
        "        return self.m(x) * 1e4\n\n"
        "def masked():\n"
        "    return Scaled(_robust())\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run_cli(["audit", "--model", "my_models:honest", "--data", "digits", "--eps", "0.1", *FAST], capsys)
    report = json.loads(out)
    assert code == 0 and report["verdict"] == "pass"
    assert {c["name"] for c in report["checks"]} == CHECKS
    code, out, _ = run_cli(["audit", "--model", "my_models:masked", "--data", "digits", "--eps", "0.1", *FAST], capsys)
    assert code == 1 and json.loads(out)["verdict"] == "suspicious"
    # A registered model name with a safetensors file: the same model, loaded without executing code.
    loaded = load_factory_model("small_cnn", str(weights), "digits", None)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), robust_model(x))


def test_audit_of_a_run_directory_writes_audit_json(tmp_path, capsys):
    from toughen.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data="digits", recipe="pgd", eps=0.1, epochs=1, steps=2, eval_steps=0), run, progress=False)
    code, out, _ = run_cli(["audit", str(run), *FAST], capsys)
    report = json.loads(out)
    assert code == (0 if report["verdict"] == "pass" else 1)
    assert json.loads((run / "audit.json").read_text())["verdict"] == report["verdict"]


@pytest.mark.parametrize("args,message", [
    (["audit"], "give a RUN_DIR"),
    (["audit", "--model", "nope_module_x:f", "--data", "digits", "--eps", "0.1"], "cannot import"),
    (["audit", "--model", "small_cnn", "--data", "digits", "--eps", "0.1"], "--weights"),
])
def test_audit_usage_errors_exit_2(args, message, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err
