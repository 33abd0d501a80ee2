"""Expectation over transformation (eot=N on pgd, fgsm, apgd), the rand suite, accuracy over k
draws (worst of k and expected) and `toughen eval` switching a randomized model to rand."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import toughen
from toughen.attacks import Attack, apgd, fgsm, pgd
from toughen.errors import ToughenUsageError
from toughen.evaluation.suite import DRAWS, SUITES, short_label
from conftest import run_cli

EPS = 0.1  # the robust fixture's training eps


# ----------------------------------------------------------------------------- randomized models

class InputNoise(nn.Module):
    """Gaussian noise added to the input on every pass (e.g. Liu et al. 2018, random self-ensemble)."""

    def __init__(self, model: nn.Module, sigma: float = 0.1, seed: int = 0):
        super().__init__()
        self.model, self.sigma, self.gen = model, sigma, torch.Generator().manual_seed(seed)

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn(x.shape, generator=self.gen).to(x))


class ResizePad(nn.Module):
    """Random resizing and padding (Xie et al. 2018, "Mitigating Adversarial Effects Through
    Randomization"), at 8x the resolution of the 8x8 digits so that it is mild: upsample to 64,
    resize to a random size in [60, 64], pad at a random offset back to 64, average down to 8."""

    def __init__(self, model: nn.Module, up: int = 8, shrink: int = 4, seed: int = 0):
        super().__init__()
        self.model, self.up, self.shrink, self.gen = model, up, shrink, torch.Generator().manual_seed(seed)

    def forward(self, x):
        h = x.shape[-1]
        big = self.up * h
        r = int(torch.randint(big - self.shrink, big + 1, (), generator=self.gen))
        top, left = torch.randint(0, big - r + 1, (2,), generator=self.gen).tolist()
        z = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        z = F.pad(z, (left, big - r - left, top, big - r - top))
        return self.model(F.adaptive_avg_pool2d(z, h))


class DropoutAtTest(nn.Module):
    """Dropout left on at test time, on the features before the last layer."""

    def __init__(self, model: nn.Sequential, p: float = 0.1, seed: int = 0):
        super().__init__()
        self.features, self.head, self.p = model[:-1], model[-1], p
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x):
        f = self.features(x)
        keep = (torch.rand(f.shape, generator=self.gen) >= self.p).to(f)
        return self.head(f * keep / (1 - self.p))


class _FlipGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sign):
        ctx.save_for_backward(sign)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (sign,) = ctx.saved_tensors
        return grad * sign.view(-1, *([1] * (grad.dim() - 1))), None


class SignFlip(nn.Module):
    """The same logits on every pass, but each example's input gradient points the wrong way in
    a random 30% of the passes: the expected gradient is 0.4 times the true one."""

    def __init__(self, model: nn.Module, p_flip: float = 0.3, seed: int = 0):
        super().__init__()
        self.model, self.p_flip, self.gen = model, p_flip, torch.Generator().manual_seed(seed)

    def forward(self, x):
        sign = torch.where(torch.rand(len(x), generator=self.gen) < self.p_flip, -1.0, 1.0).to(x)
        return self.model(_FlipGradient.apply(x, sign))


RANDOMIZED = {"noise": InputNoise, "resize": ResizePad, "dropout": DropoutAtTest}


# ----------------------------------------------------------------------------- eot on the attacks

def test_eot_1_and_2_give_the_plain_attack_on_a_deterministic_model(robust_model, test_batch):
    """eot=1 is one plain pass (no arithmetic added), and on a deterministic model the average of
    two identical passes is exactly the one: the attacks' results are bit-identical. (The check
    against the code before EOT existed, same generator, same outputs: tools/same_behaviour.py and
    docs/evaluation.md.)"""
    x, y = test_batch[0][:48], test_batch[1][:48]
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    runs = {
        "pgd": lambda **k: pgd(robust_model, x, y, eps=EPS, steps=5, restarts=2, generator=gen(), **k),
        "pgd_margin_early": lambda **k: pgd(robust_model, x, y, eps=EPS, steps=5, loss="margin", early_stop=True,
                                            generator=gen(), **k),
        "fgsm": lambda **k: fgsm(robust_model, x, y, eps=EPS, **k),
        "apgd_ce": lambda **k: apgd(robust_model, x, y, eps=EPS, steps=10, generator=gen(), **k),
        "apgd_t": lambda **k: apgd(robust_model, x, y, eps=EPS, steps=10, loss="dlr", n_target_classes=2,
                                   generator=gen(), **k),
    }
    for name, run in runs.items():
        plain = run()
        assert torch.equal(run(eot=1), plain), name
        assert torch.equal(run(eot=2), plain), name


def test_eot_recovers_the_true_gradient_direction(robust_model, test_batch):
    """SignFlip's gradient points the wrong way in 30% of the passes. FGSM with one pass steps the
    wrong way (and so returns x, the worse of the two) for about 30% of the examples; averaged
    over 50 passes the gradient has the true sign and FGSM is the FGSM of the plain model."""
    x, y = test_batch
    truth = fgsm(robust_model, x, y, eps=EPS)
    moved = (truth != x).flatten(1).any(1)
    one = fgsm(SignFlip(robust_model), x, y, eps=EPS, eot=1)
    many = fgsm(SignFlip(robust_model), x, y, eps=EPS, eot=50)
    agree_one = (one == truth).flatten(1).all(1)[moved].float().mean().item()
    agree_many = (many == truth).flatten(1).all(1)[moved].float().mean().item()
    assert agree_many >= 0.97, agree_many
    assert agree_one <= 0.85, agree_one


def test_eot_must_be_a_whole_number_at_least_1(robust_model, test_batch):
    x, y = test_batch[0][:4], test_batch[1][:4]
    for attack in (pgd, fgsm, apgd):
        with pytest.raises(ToughenUsageError, match="eot"):
            attack(robust_model, x, y, eps=EPS, eot=0)


# ----------------------------------------------------------------------------- draws: worst of k, expected

def test_rand_suite_has_autoattacks_rand_budgets():
    assert [short_label(a) for a in SUITES["rand"]] == ["apgd-ce-eot20", "apgd-dlr-eot20"]
    assert all(a.options["steps"] == 100 and a.options.get("restarts", 1) == 1 for a in SUITES["rand"])
    assert DRAWS == {"rand": 10}


def test_draws_on_a_deterministic_model_change_nothing(robust_model, test_batch):
    x, y = test_batch[0][:64], test_batch[1][:64]
    suite = [Attack("pgd", {"steps": 5, "early_stop": True})]
    one = toughen.evaluate(robust_model, x, y, suite=suite, eps=EPS, fast_layout=False)
    ten = toughen.evaluate(robust_model, x, y, suite=suite, eps=EPS, fast_layout=False, draws=10)
    assert "expected" not in one and ten["draws"] == 10
    assert torch.equal(one["robust"], ten["robust"])
    assert torch.equal(ten["expected"], ten["robust"].float())
    assert ten["expected_clean_accuracy"] == pytest.approx(one["clean_accuracy"])
    assert ten["expected_robust_accuracy"] == pytest.approx(one["robust_accuracy"])


def test_worst_of_k_is_at_most_the_expected_accuracy(robust_model, test_batch):
    x, y = test_batch[0][:64], test_batch[1][:64]
    r = toughen.evaluate(InputNoise(robust_model, sigma=0.2), x, y, eps=EPS, fast_layout=False, draws=10,
                         suite=[Attack("pgd", {"steps": 5, "eot": 2}), Attack("apgd", {"steps": 5, "eot": 2})])
    expected, robust = r["expected"], r["robust"]
    assert expected.shape == robust.shape and ((expected * 10).round() == expected * 10).all()  # tenths
    assert (expected[robust] == 1).all(), "an example robust in every draw has expected fraction 1"
    assert r["robust_accuracy"] <= r["expected_robust_accuracy"] <= r["expected_clean_accuracy"]
    assert r["clean_accuracy"] <= r["expected_clean_accuracy"]
    assert r["robust_accuracy"] < r["expected_robust_accuracy"], "sigma 0.2 should leave some examples in between"
    rows = r["per_attack"]
    assert [p["expected_robust_accuracy"] for p in rows] == sorted((p["expected_robust_accuracy"] for p in rows),
                                                                   reverse=True)
    assert rows[-1]["expected_robust_accuracy"] == pytest.approx(r["expected_robust_accuracy"])


@pytest.mark.expensive  # about 11 minutes on 2 cores: standard's FAB-T and Square on randomized models
def test_rand_is_below_standard_on_three_randomized_models(robust_model, test_batch):
    """The done-when of the rand suite: on input noise, random resize-and-pad and test-time dropout
    around the PGD-trained digits model, rand (EOT-20 APGD-CE and APGD-DLR, judged worst of 10
    draws) leaves fewer examples robust than standard (APGD-CE, APGD-T, Square-5000, one draw).
    Measured (32 digits, eps 0.1): see docs/evaluation.md."""
    x, y = test_batch[0][:32], test_batch[1][:32]
    strictly = 0
    for name, wrap in RANDOMIZED.items():
        standard = toughen.evaluate(wrap(robust_model), x, y, suite="standard", eps=EPS, amp=None, fast_layout=False)
        rand = toughen.evaluate(wrap(robust_model), x, y, suite="rand", eps=EPS, amp=None, fast_layout=False)
        assert rand["suite"] == "rand" and rand["draws"] == 10
        assert rand["robust_accuracy"] <= rand["expected_robust_accuracy"]
        assert rand["robust_accuracy"] <= standard["robust_accuracy"], name
        strictly += rand["robust_accuracy"] < standard["robust_accuracy"]
    assert strictly >= 2


# ----------------------------------------------------------------------------- toughen eval

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from toughen.train import TrainConfig, train

    out = tmp_path_factory.mktemp("eot") / "run"
    train(TrainConfig(data="digits", recipe="pgd", eps=0.1, epochs=1, steps=2, eval_steps=0), out, progress=False)
    return out


@pytest.fixture
def cheap_suites(monkeypatch):
    """standard and rand at a few steps: these tests are about which suite runs, not its budget."""
    monkeypatch.setitem(SUITES, "standard", [Attack("apgd", {"steps": 5})])
    monkeypatch.setitem(SUITES, "rand", [Attack("apgd", {"steps": 5, "eot": 3}),
                                         Attack("apgd", {"steps": 5, "loss": "dlr", "eot": 3})])


def test_eval_standard_switches_a_randomized_model_to_rand(run_dir, capsys, monkeypatch, cheap_suites):
    import toughen.evaluation.run_eval as run_eval

    real_load = run_eval.load
    monkeypatch.setattr(run_eval, "load", lambda *a, **k: InputNoise(real_load(*a, **k)))
    code, out, _ = run_cli(["eval", str(run_dir), "--suite", "standard", "--n", "40", "--amp", "fp32"], capsys)
    assert code == 0
    assert "suite rand, not standard" in out and "randomized" in out and "worst of 10" in out
    row = json.loads((run_dir / "evaluations.jsonl").read_text().splitlines()[-1])
    assert row["suite"] == "rand" and row["attack"] == "suite:rand" and "randomized" in row["suite_reason"]
    assert [p["attack"] for p in row["per_attack"]] == ["apgd-ce-eot3", "apgd-dlr-eot3"]
    assert row["draws"] == 10 and row["robust_accuracy"] <= row["expected_robust_accuracy"]
    assert "expected" not in row  # the per-example tensor stays out of the JSON


def test_eval_standard_keeps_standard_for_a_deterministic_model(run_dir, capsys, cheap_suites):
    code, out, _ = run_cli(["eval", str(run_dir), "--suite", "standard", "--n", "40", "--amp", "fp32", "--json"],
                           capsys)
    assert code == 0
    r = json.loads(out)
    assert r["suite"] == "standard" and r["per_attack"][0]["attack"] == "apgd-ce"
    assert "suite_reason" not in r and "draws" not in r
