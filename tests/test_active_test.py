"""The binarization test (Zimmermann et al. 2022): sound attacks pass it on honest models, a gradient
attack fails it once the gradients are masked while a gradient-free one still passes."""

import json

import pytest
import torch
from torch import nn

from toughen.attacks import Attack
from toughen.errors import ToughenUsageError
from toughen.evaluation.active_test import Binarized, binarization_test, features, find_feature_layer, fit_readout
from conftest import run_cli

EPS = 0.1
N = 20  # cases: at 20 each costs ~0.1 s per attack on digits
PGD = Attack("pgd", {"steps": 20})
APGD = Attack("apgd", {"steps": 20})
SQUARE = Attack("square", {"n_queries": 1000})


class ZeroGrad(torch.autograd.Function):
    """Identity forward, zero backward: the purest gradient masking."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class Masked(nn.Module):
    """``model`` behind a zero-gradient input layer: the same predictions, no gradient at all."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(ZeroGrad.apply(x))


def _run(model, digits, attacks, seed=0, n=N, **kw):
    return binarization_test(model, digits.x_test[:n], digits.y_test[:n], attacks, eps=EPS,
                             generator=torch.Generator().manual_seed(seed), **kw)


def _check_consistent(result, attacks):
    assert result.attacks == tuple(a.label for a in attacks)
    assert 0 < result.n_valid <= result.n_cases == len(result.cases)
    for case in result.cases:
        if case["valid"]:
            # The case is sound: x in class 0, the boundary point (in the threat model) in class 1.
            assert case["clean_margin"] < 0 < case["boundary_margin"]
            assert set(case["passed"]) == set(result.attacks)
            assert all(p == (case["margin"][lab] > 0) for lab, p in case["passed"].items())
        else:
            assert case["reason"]
    for fraction in [*result.pass_fraction.values(), result.random_pass_fraction]:
        assert 0 <= fraction <= 1


@pytest.fixture(scope="module")
def honest(robust_model, digits):
    return _run(robust_model, digits, [PGD, APGD, SQUARE])


# On 20 digits cases the honest models (conftest's standard and robust ones) gave, for seeds 0-2:
# PGD-20 0.75-0.9, APGD-20 0.95-1.0, Square-1000 0.95-1.0, random points 0.05-0.1. The bounds
# below leave a margin of a few cases.
def test_sound_attacks_pass_on_an_honest_model(honest):
    result = honest
    _check_consistent(result, [PGD, APGD, SQUARE])
    assert result.n_valid >= 0.9 * N
    frac = result.pass_fraction
    assert frac[SQUARE.label] >= 0.85 and frac[APGD.label] >= 0.85
    assert frac[PGD.label] >= 0.6
    # Every attack searches: it beats random points in the ball.
    assert min(frac.values()) > result.random_pass_fraction


def test_masked_gradients_fail_pgd_but_not_square(honest, robust_model, digits):
    attacks = [PGD, SQUARE]
    masked = _run(Masked(robust_model), digits, attacks)
    _check_consistent(masked, attacks)
    # The masked model predicts as the honest one does: same features, same cases.
    assert [c["valid"] for c in masked.cases] == [c["valid"] for c in honest.cases]
    # Measured: PGD 0.0 on the masked model (its steps are zero; only its random start can hit),
    # Square 0.95-1.0, as on the honest model.
    assert masked.pass_fraction[PGD.label] <= 0.2
    assert masked.pass_fraction[PGD.label] <= honest.pass_fraction[PGD.label] - 0.5
    assert masked.pass_fraction[SQUARE.label] >= 0.85


def test_deterministic_for_a_generator_whatever_the_attacks_after(robust_model, digits):
    fast = Attack("pgd", {"steps": 5})
    a = _run(robust_model, digits, [fast], seed=3, n=4, n_inner=64)
    b = _run(robust_model, digits, [fast], seed=3, n=4, n_inner=64)
    c = _run(robust_model, digits, [fast, Attack("fgsm")], seed=3, n=4, n_inner=64)
    assert a.cases == b.cases and a.pass_fraction == b.pass_fraction
    assert [case["margin"][fast.label] for case in a.cases] == [case["margin"][fast.label] for case in c.cases]
    json.dumps(a.to_dict())  # plain types


def test_the_model_is_left_unchanged(robust_model, digits):
    before = {k: v.clone() for k, v in robust_model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in robust_model.parameters()]
    result = _run(robust_model, digits, [Attack("pgd", {"steps": 3})], n=2, n_inner=32)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in robust_model.modules())
    assert all(torch.equal(before[k], v) for k, v in robust_model.state_dict().items())
    after = [p.grad for p in robust_model.parameters()]
    assert all((g is None and a is None) or torch.equal(g, a) for g, a in zip(grads, after))
    # By default the features are the input of the last linear layer.
    last_linear = [name for name, m in robust_model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert result.feature_layer == last_linear


def test_the_readout_separates_with_a_unit_margin():
    gen = torch.Generator().manual_seed(0)
    inner, boundary = torch.randn(100, 300, generator=gen), torch.randn(1, 300, generator=gen) + 0.1
    weight, bias = fit_readout(inner, boundary)
    z = torch.cat([inner, boundary]) @ weight.t() + bias
    diff = z[:, 1] - z[:, 0]
    assert (diff[:100] <= -1 + 1e-4).all() and (diff[100:] >= 1 - 1e-4).all()
    # Identical points cannot be told apart: no readout.
    assert fit_readout(torch.ones(5, 3), torch.ones(1, 3)) is None


def test_the_binarized_model_reads_the_chosen_layer(robust_model, digits):
    x = digits.x_test[:3]
    layer, name = find_feature_layer(robust_model, x, None)
    f = features(robust_model, layer, x)
    weight, bias = torch.randn(2, f.shape[1]), torch.randn(2)
    with torch.no_grad():
        torch.testing.assert_close(Binarized(robust_model, layer, weight, bias)(x), f @ weight.t() + bias)
    assert find_feature_layer(robust_model, x, name)[0] is layer
    assert find_feature_layer(robust_model, x, "logits") == (None, "logits")


@pytest.mark.parametrize("kwargs,message", [
    (dict(eps=0.0), "eps > 0"),
    (dict(eps=EPS, feature_layer="no_such_layer"), "no module"),
    (dict(eps=EPS, n_inner=1), "n_inner"),
])
def test_usage_errors(kwargs, message, robust_model, digits):
    with pytest.raises(ToughenUsageError, match=message):
        binarization_test(robust_model, digits.x_test[:2], digits.y_test[:2], [PGD], **kwargs)


def test_a_model_without_linear_layers_needs_a_feature_layer(digits):
    model = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    with pytest.raises(ToughenUsageError, match="feature_layer"):
        binarization_test(model, digits.x_test[:2], digits.y_test[:2], [PGD], eps=EPS)


def test_audit_active_test_on_a_run_directory(tmp_path, capsys):
    from toughen.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data="digits", recipe="pgd", eps=0.1, epochs=1, steps=2, eval_steps=0), run, progress=False)
    fast = ["--n", "16", "--steps", "5", "--queries", "100", "--active-test", "--active-n", "3"]
    code, out, _ = run_cli(["audit", str(run), *fast, "--json"], capsys)
    report = json.loads(out)
    active = report["active_test"]
    assert active["n_cases"] == 3 and set(active["pass_fraction"]) == {"pgd(steps=5)", "apgd(steps=5)",
                                                                        "square(n_queries=100)"}
    assert code == (0 if report["verdict"] == "pass" else 1)  # the verdict is the checks' alone
    assert json.loads((run / "audit.json").read_text())["active_test"] == active
    code, out, _ = run_cli(["audit", str(run), *fast], capsys)
    assert "binarization test" in out and "random points" in out
    code, _, err = run_cli(["audit", str(run), *fast[:-1], "0"], capsys)
    assert code == 2 and "--active-n" in err
