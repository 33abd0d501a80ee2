"""Per-example robust radius (toughen.evaluation.radius, `toughen eval --radius`): every radius is
the norm of a real adversarial input, the curve is the fraction of radii above eps, the radius of a
linear model is its closed-form distance to the boundary, and the row reaches the report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import run_cli
from toughen.console import fmt_number
from toughen.evaluation.radius import default_grid, radius_curve, radius_histogram, radius_summary, robust_radii
from toughen.report import build_report
from toughen.runs import load, read_jsonl
from toughen.train import TrainConfig, train


def _norm(t, norm):
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _linear(d=20, k=5, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(d, k)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def _points(model, n=40, d=20):
    # near the middle of [0, 1]: the closest boundary point is inside the box
    x = 0.45 + 0.1 * torch.rand(n, 1, d, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model(x).argmax(1)


def _exact_radius(lin, x, y, norm):
    """min_j (z_y - z_j) / ||w_y - w_j||_q (q the dual norm): the distance to the nearest other class."""
    w, b = lin.weight.detach(), lin.bias.detach()
    z = x.flatten(1) @ w.T + b
    diff = w[y][:, None, :] - w[None]
    den = diff.norm(dim=2) if norm == "l2" else diff.abs().sum(2)
    gap = (z.gather(1, y[:, None]) - z) / den
    return gap.masked_fill(torch.arange(w.shape[0])[None] == y[:, None], math.inf).amin(1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_radius_of_a_linear_model_is_the_distance_to_its_boundary(norm):
    model, lin = _linear()
    x, y = _points(model)
    exact = _exact_radius(lin, x, y, norm)
    r = robust_radii(model, x, y, norm=norm, steps=50, n_target_classes=3)
    assert (r["radius"] >= exact * (1 - 1e-4)).all(), "closer than the boundary: not adversarial"
    assert (r["radius"] <= exact * 1.03).all(), f"worst ratio {(r['radius'] / exact).max():.4f}"
    assert [s["search"] for s in r["searches"]] == ["fab", "fab-t3"]


def test_misclassified_examples_have_radius_zero_and_are_their_own_answer():
    model, _ = _linear()
    x, y = _points(model, n=12)
    y[:5] = (y[:5] + 1) % 5  # these five are now misclassified
    r = robust_radii(model, x, y, steps=10, n_target_classes=2)
    assert (r["radius"][:5] == 0).all() and (r["radius"][5:] > 0).all()
    assert torch.equal(r["x_adv"][:5], x[:5])
    assert r["clean"].tolist() == [False] * 5 + [True] * 7


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An mlp trained one epoch on digits: a complete run directory in about a second."""
    out = tmp_path_factory.mktemp("radius") / "run"
    train(TrainConfig(data="digits", model="mlp", recipe="standard", eps=0.1, epochs=1, eval_steps=1,
                      val_attack_steps=1), out, progress=False)
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_each_finite_radius_is_an_input_that_fools_the_model_at_that_norm(tiny_run, norm):
    from toughen.data import load_data

    model = load(tiny_run).eval()
    splits = load_data("digits")
    x, y = splits.x_test[:40], splits.y_test[:40]
    r = robust_radii(model, x, y, norm=norm, steps=10, n_target_classes=2, batch_size=16)
    radius, x_adv = r["radius"], r["x_adv"]
    assert radius.shape == (40,) and x_adv.shape == x.shape and x_adv.dtype == x.dtype
    found = torch.isfinite(radius) & (radius > 0)
    assert found.sum() >= 30, "FAB found almost nothing on a model trained one epoch without attacks"
    with torch.no_grad():
        assert (model(x_adv[found]).argmax(1) != y[found]).all()
    torch.testing.assert_close(_norm(x_adv - x, norm)[found], radius[found])
    assert (x_adv >= 0).all() and (x_adv <= 1).all()


def test_refinement_lowers_radii_just_above_eps_and_never_below_the_boundary():
    """On a linear model FAB stops about 0.5% past the boundary; at an eps inside that gap APGD-T
    finds the boundary's corner, and the refined radius is eps, still not below the exact distance."""
    from toughen.attacks import Attack

    model, lin = _linear()
    x, y = _points(model)
    exact = _exact_radius(lin, x, y, "linf")
    fab_only = robust_radii(model, x, y, steps=50, n_target_classes=0)["radius"]
    j = int(exact.argsort()[len(exact) // 2])
    eps = float(exact[j] + fab_only[j]) / 2  # between the true radius of example j and FAB's
    r = robust_radii(model, x, y, steps=50, n_target_classes=0, refine_at=[eps], window=0.5,
                     refine_attacks=[Attack("apgd", {"steps": 20, "loss": "dlr", "n_target_classes": 4})],
                     generator=torch.Generator().manual_seed(0))
    changed = r["radius"] < fab_only
    near = (fab_only > eps) & (fab_only <= 1.5 * eps)
    assert changed[j] and not (changed & ~near).any(), "only the examples in the window are attacked"
    assert (r["radius"][changed] <= eps).all() and (r["radius"] >= exact * (1 - 1e-4)).all()
    with torch.no_grad():
        assert (model(r["x_adv"][changed]).argmax(1) != y[changed]).all()
    torch.testing.assert_close(_norm(r["x_adv"] - x, "linf")[changed], r["radius"][changed])
    log = r["searches"][-1]
    assert log["search"] == f"refine at {eps:g}: apgd-t-dlr"
    assert log["checked"] == int(near.sum()) and log["improved"] == int(changed.sum())


def test_curve_is_the_fraction_of_radii_above_eps_and_never_rises():
    radius = torch.tensor([0.0, 0.0, 0.05, 0.1, 0.1, 0.2, 0.31, 0.4, math.inf, math.inf])
    curve = radius_curve(radius, [0.3, 0.0, 0.1, 0.05, 1.0])
    assert [row["eps"] for row in curve] == [0.0, 0.05, 0.1, 0.3, 1.0]
    assert [row["robust_accuracy"] for row in curve] == pytest.approx([0.8, 0.7, 0.5, 0.4, 0.2])
    grid = default_grid(radius, include=[0.3])
    assert grid[0] == 0 and grid[-1] == pytest.approx(0.4) and 0.3 in grid
    values = [row["robust_accuracy"] for row in radius_curve(radius, grid)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    for row in radius_curve(radius, grid):
        assert row["robust_accuracy"] == int((radius > row["eps"]).sum()) / len(radius)
    hist = radius_histogram(radius, bins=4)
    assert hist["counts"] == [1, 2, 1, 2] and hist["zero"] == 2 and hist["none_found"] == 2
    s = radius_summary(radius)
    assert s["median"] == pytest.approx(0.1) and s["misclassified"] == 2 and s["none_found"] == 2
    assert s["radii"][-1] is None and json.loads(json.dumps(s)) == s  # JSON-safe: no Infinity
    assert "radii" not in radius_summary(radius, store=5)


def test_cli_radius_json_prints_and_records_the_row(tiny_run, capsys):
    code, out, err = run_cli(["eval", str(tiny_run), "--radius", "--json", "--n", "40", "--steps", "10",
                              "--targets", "2", "--eps-sweep", "0.05,0.1"], capsys)
    assert code == 0, err
    result = json.loads(out)
    r = result["radius"]
    assert result["attack"] == "radius:fab+fab-t2" and result["n"] == 40 and len(r["radii"]) == 40
    radii = torch.tensor([math.inf if v is None else v for v in r["radii"]])
    by_eps = {row["eps"]: row["robust_accuracy"] for row in r["curve"]}
    for eps in (0.05, 0.1):  # the sweep's eps are on the curve, read from the radii
        assert by_eps[eps] == pytest.approx((radii > eps).float().mean().item())
    assert result["robust_accuracy"] == pytest.approx(by_eps[0.1])  # the run's eps
    assert result["clean_accuracy"] == pytest.approx(by_eps[0.0])
    row = read_jsonl(tiny_run / "evaluations.jsonl")[-1]
    assert row["radius"]["median"] == r["median"] and row["attack"] == result["attack"]

    code, out, _ = run_cli(["eval", str(tiny_run), "--radius", "--n", "8", "--steps", "3", "--targets", "0"], capsys)
    assert code == 0 and "median radius" in out and "eps 0.1: robust accuracy" in out
    code, _, err = run_cli(["eval", str(tiny_run), "--radius", "--suite", "quick"], capsys)
    assert code == 2 and "drop --suite" in err


def test_report_draws_the_radius_section(tiny_run, tmp_path):
    import shutil

    from toughen.evaluation.run_eval import evaluate_run, radius_run

    plain = tmp_path / "plain"
    shutil.copytree(tiny_run, plain)
    (plain / "evaluations.jsonl").unlink(missing_ok=True)
    page = build_report([plain], tmp_path / "plain.html", gallery=False).read_text()
    assert 'id="radius"' not in page
    evaluate_run(plain, attack="pgd", eps=0.05, steps=2, n=40)  # a per-eps measurement, drawn as a marker
    result = radius_run(plain, n=40, steps=5, n_target_classes=1)
    page = build_report([plain], tmp_path / "r.html", gallery=False).read_text()
    assert 'id="radius"' in page and "radius:fab+fab-t1" in page and "data:image/png;base64" in page
    assert f"median radius {fmt_number(result['radius']['median'])}" in page
    assert 'id="certified"' not in page  # the other sections are untouched
