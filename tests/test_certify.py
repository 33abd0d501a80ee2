"""Certification (toughen.certify): bounds that hold, certificates no attack breaks, smoothing's
radius against the exact one of a linear model, and the commands around them."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import run_cli
from toughen.attacks import apgd, pgd, square
from toughen.certify import certify, output_bounds, spec_bounds
from toughen.certify.bounds import margin_spec
from toughen.certify.smoothing import smoothed_certify
from toughen.data import load_data
from toughen.errors import ToughenUsageError
from toughen.models import build_model
from toughen.models.layers import Normalize
from toughen.report import build_report
from toughen.train import TrainConfig, fit


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    with_everything = nn.Sequential(
        Normalize([0.3], [0.2]), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 10))
    with_everything[2].running_mean.uniform_(-0.5, 0.5)
    with_everything[2].running_var.uniform_(0.5, 2.0)
    return {"mlp": build_model("mlp", (1, 12, 12), 10, [0.5], [0.25], hidden=32),
            "small_cnn": build_model("small_cnn", (1, 12, 12), 10, [0.5], [0.25]),
            "every layer": with_everything}


def _ball_points(x: torch.Tensor, eps: float, norm: str, k: int, gen: torch.Generator) -> torch.Tensor:
    """k points of the ball around each example, inside [0, 1]: corners, the sphere and inside."""
    points = []
    for i in range(k):
        d = torch.randn(x.shape, generator=gen)
        if norm == "linf":
            d = d.sign() * eps if i % 2 == 0 else (2 * torch.rand(x.shape, generator=gen) - 1) * eps
        else:
            d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps * (1.0 if i % 2 == 0 else 0.5)
        points.append((x + d).clamp(0, 1))  # clamping keeps an L2 point inside the ball
    return torch.stack(points)


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.4)])
@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("name", ["mlp", "small_cnn", "every layer"])
def test_bounds_contain_the_outputs_of_points_of_the_ball(name, method, norm, eps):
    model = _models()[name].eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((6, 1, 12, 12), generator=gen)
    with torch.no_grad():
        box = output_bounds(model, x, eps=eps, norm=norm, method=method)
        outputs = torch.stack([model(p) for p in _ball_points(x, eps, norm, 40, gen)])
    assert (box.lower <= box.upper).all()
    slack = 1e-4 * (1 + outputs.abs())
    assert (outputs >= box.lower - slack).all() and (outputs <= box.upper + slack).all()


@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("l2", 0.3)])
def test_crown_is_inside_ibp_on_an_mlp(norm, eps):
    model = _models()["mlp"].eval()
    x = torch.rand((8, 1, 12, 12), generator=torch.Generator().manual_seed(2))
    spec = margin_spec(torch.arange(8) % 10, 10)
    with torch.no_grad():
        ibp = spec_bounds(model, x, spec, eps=eps, norm=norm, method="ibp")
        crown = spec_bounds(model, x, spec, eps=eps, norm=norm, method="crown")
    assert (crown.lower >= ibp.lower - 1e-5).all() and (crown.upper <= ibp.upper + 1e-5).all()
    assert (crown.upper - crown.lower).mean() < 0.5 * (ibp.upper - ibp.lower).mean()  # and much tighter


def test_at_eps_zero_the_bounds_are_the_outputs():
    model = _models()["every layer"].eval()
    x = torch.rand((4, 1, 12, 12))
    for method in ("ibp", "crown"):
        with torch.no_grad():
            box = output_bounds(model, x, eps=0.0, method=method)
            assert torch.allclose(box.lower, model(x), atol=1e-5) and torch.allclose(box.upper, model(x), atol=1e-5)


@pytest.fixture(scope="module")
def ibp_mlp():
    """An MLP trained with the ibp recipe on digits at eps 0.1: a good part of it certifies at 0.05."""
    splits = load_data("digits")
    torch.manual_seed(0)
    model = build_model("mlp", splits.input_shape, splits.num_classes, splits.mean, splits.std, hidden=64)
    cfg = TrainConfig(data="digits", model="mlp", recipe="ibp", eps=0.1, epochs=12, eps_warmup=0.5, lr=2e-3,
                      batch_size=64, val_attack_steps=1, amp=None, channels_last=False)
    fit(model, splits, cfg, progress=False)
    return model.eval(), splits


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_no_attack_fools_a_certified_example(ibp_mlp, method):
    model, splits = ibp_mlp
    x, y, eps = splits.x_test, splits.y_test, 0.05
    found = certify(model, x, y, eps=eps, method=method)
    certified = found["certified"]
    assert certified.sum() >= 0.3 * len(x)  # enough certified examples for the check to mean something
    xc, yc = x[certified], y[certified]
    gen = torch.Generator().manual_seed(0)
    for x_adv in (pgd(model, xc, yc, eps=eps, steps=40, restarts=2, generator=gen),
                  apgd(model, xc, yc, eps=eps, steps=40, generator=gen),
                  apgd(model, xc, yc, eps=eps, steps=40, loss="dlr", generator=gen),
                  square(model, xc, yc, eps=eps, n_queries=300, generator=gen)):
        assert (x_adv - xc).abs().max() <= eps + 1e-6
        with torch.no_grad():
            assert (model(x_adv).argmax(1) == yc).all()


def test_ibp_training_certifies_more_than_standard_training(ibp_mlp):
    model, splits = ibp_mlp
    torch.manual_seed(0)
    plain = build_model("mlp", splits.input_shape, splits.num_classes, splits.mean, splits.std, hidden=64)
    fit(plain, splits, TrainConfig(data="digits", model="mlp", recipe="standard", epochs=12, lr=2e-3, batch_size=64,
                                   val_attack_steps=1, amp=None, channels_last=False), progress=False)
    x, y = splits.x_test, splits.y_test
    certified = certify(model, x, y, eps=0.05)["certified_accuracy"]
    assert certified > certify(plain.eval(), x, y, eps=0.05)["certified_accuracy"] + 0.2


def test_unsupported_layers_are_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2), nn.Softmax(1))
    with pytest.raises(ToughenUsageError, match="cannot bound these layers: Softmax, Tanh"):
        certify(model, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), eps=0.1)
    with pytest.raises(ToughenUsageError, match="nn.Sequential"):
        certify(nn.Linear(4, 2), torch.rand(2, 4), torch.zeros(2, dtype=torch.long), eps=0.1)


def test_smoothing_radius_of_a_linear_model_is_at_most_its_distance_to_the_boundary():
    """For f(x) = [w.x + b > 0], the smoothed classifier's exact radius is |w.x + b| / ||w||
    (Cohen et al. 2019, section 3): CERTIFY's, from samples, is below it and, with many samples,
    close to it."""
    torch.manual_seed(0)
    w, b = torch.randn(16), 0.1
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(16), w]))
        model[1].bias.copy_(torch.tensor([0.0, b]))
    x = torch.randn(12, 1, 4, 4) * 0.3
    distance = (x.flatten(1) @ w + b).abs() / w.norm()
    found = smoothed_certify(model.eval(), x, sigma=0.5, n0=100, n=20000, alpha=0.001,
                             generator=torch.Generator().manual_seed(0))
    answered = found.prediction != -1
    assert answered.sum() >= 6
    assert (found.radius[answered] <= distance[answered] + 1e-6).all()
    assert (found.radius[answered] >= 0.75 * distance[answered].clamp(max=1.6)).all()
    side = ((x.flatten(1) @ w + b) > 0).long()
    assert (found.prediction[answered] == side[answered]).all()


def test_certify_and_eval_certify_commands(ibp_mlp, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", "digits", "--model", "mlp", "--recipe", "ibp", "--eps", "0.1",
                            "--epochs", "2", "--eps-warmup", "0.5", "--eval-steps", "2", "--amp", "fp32",
                            "--out", str(run)], capsys)
    assert code == 0, err
    code, out, err = run_cli(["certify", str(run), "--eps", "0.05", "--n", "50", "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["method"] == "ibp" and row["n"] == 50 and 0 <= row["certified_accuracy"] <= row["clean_accuracy"]
    code, out, err = run_cli(["eval", str(run), "--eps", "0.05", "--n", "50", "--steps", "10", "--certify", "crown",
                              "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    bracket = result["bracket"]
    assert bracket["certified_accuracy"] <= bracket["attacked_accuracy"] == result["robust_accuracy"]
    assert bracket["contradictions"] == 0
    rows = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert rows[0]["certify"] == "ibp" and "bracket" in rows[1]
    code, _, err = run_cli(["certify", str(run), "--method", "smoothing", "--n", "5"], capsys)
    assert code == 2 and "L2" in err
    page = build_report([run], tmp_path / "report.html", gallery=False).read_text()
    low, high = (f"{100 * bracket[k]:.1f}%" for k in ("certified_accuracy", "attacked_accuracy"))
    assert 'id="certified"' in page and f"(crown, ε=0.05 L∞): {low} to {high}" in page


def test_smoothing_rows_draw_the_radius_curve(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train: {recipe: augment, eps: 0.3, norm: linf, data: digits}\n")
    row = {"certify": "smoothing", "method": "smoothing", "eps": 0.5, "norm": "l2", "n": 10, "sigma": 0.5,
           "clean_accuracy": 0.9, "certified_accuracy": 0.6,
           "curve": [{"radius": 0.0, "certified_accuracy": 0.8}, {"radius": 0.5, "certified_accuracy": 0.6}]}
    (run / "evaluations.jsonl").write_text(json.dumps(row) + "\n")
    page = build_report([run], tmp_path / "report.html", gallery=False).read_text()
    assert 'id="smoothing"' in page and 'id="certified"' not in page
