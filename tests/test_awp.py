"""Adversarial weight perturbation (--awp): the size and direction of the move, the exact restore,
the loop's step taken from w with the gradient at w + v, its cost, usage errors, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from conftest import run_cli
from toughen.errors import ToughenUsageError
from toughen.runs import read_jsonl
from toughen.train import TrainConfig, loop, train
from toughen.train.awp import AWP
from toughen.train.recipes import RECIPES, RecipeContext


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 8 * 8, 10))
        self.unused = nn.Linear(3, 3)  # no gradient from the loss: not moved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return _Net().train()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)


def test_each_weight_tensor_moves_by_gamma_times_its_norm_along_its_gradient_and_comes_back_exactly():
    model, (x, y) = _model(), _batch()
    gamma = 0.01
    awp = AWP(model, gamma)
    loss = F.cross_entropy(model(x), y)
    before = _state(model)  # after the pass at w, which moved BatchNorm's statistics
    grads = dict(zip([n for n, _ in model.named_parameters()],
                     torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True)))
    awp.perturb(loss)
    moved = dict(model.named_parameters())
    assert sorted(n for n, p in moved.items() if p.dim() > 1) == ["body.0.weight", "body.4.weight", "unused.weight"]
    for name in ("body.0.weight", "body.4.weight"):  # the conv kernel and the linear weight matrix
        v = moved[name].detach() - before[name]
        assert (v.norm() / before[name].norm()).item() == pytest.approx(gamma, rel=1e-3)
        assert F.cosine_similarity(v.flatten(), grads[name].flatten(), dim=0).item() == pytest.approx(1, abs=1e-4)
    # biases, BatchNorm's scale and shift, and a weight without a gradient stay where they were
    for name in ("body.0.bias", "body.1.weight", "body.1.bias", "body.4.bias", "unused.weight", "unused.bias"):
        assert torch.equal(moved[name].detach(), before[name]), name
    model(x)  # a pass at w + v in training mode moves BatchNorm's statistics...
    assert not torch.equal(model.state_dict()["body.1.running_mean"], before["body.1.running_mean"])
    awp.restore()  # ...and restore takes them back with the weights, bit for bit
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    awp.restore()  # nothing to do a second time
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_the_gradient_at_the_perturbed_weights_is_not_the_gradient_at_w():
    """AWP does something: on the same attack points, the loss and gradient at w + v differ from
    those at w, and the loss is higher (v ascends it)."""
    model, (x, y) = _model(), _batch()
    ctx = RecipeContext(eps=0.1, steps=2, generator=torch.Generator().manual_seed(2))
    out = RECIPES.get("pgd")(model, x, y, ctx)
    at_w = out.recompute()
    (grad_w,) = torch.autograd.grad(at_w, [model.body[4].weight])
    awp = AWP(model, 0.01)
    with awp.perturbed(out.loss):
        at_v = out.recompute()
        (grad_v,) = torch.autograd.grad(at_v, [model.body[4].weight])
    assert at_v.item() > at_w.item()
    assert not torch.allclose(grad_v, grad_w, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_the_perturbation_reaches_the_pass_under_autocast(amp):
    """Inside one autocast region the low-precision copies of the weights are cached: the pass at
    w + v must not reuse the copies of w (it did, and --awp changed nothing under --amp bf16)."""
    model, (x, y) = _model(), _batch()
    ctx = RecipeContext(eps=0.1, steps=2, generator=torch.Generator().manual_seed(2))
    awp = AWP(model, 0.01)
    with torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp]):
        out = RECIPES.get("pgd")(model, x, y, ctx)
        at_w = out.recompute().item()
        awp.perturb(out.loss)
        at_v = out.recompute().item()
        awp.restore()
        again = out.recompute().item()
    assert at_v > at_w  # the weights the pass used were moved, up the loss
    assert again == at_w  # and the copies of w + v did not outlive the restore


def test_a_bf16_run_with_awp_trains_differently_from_one_without():
    from toughen.data import load_data
    from toughen.train import fit

    losses = []
    for awp in (None, 0.01):
        cfg = _cfg(recipe="trades", amp="bf16", channels_last=True, awp=awp, epochs=2)
        losses.append([r["loss"] for r in fit(_model(), load_data("digits"), cfg, progress=False)])
    assert losses[0] != losses[1]  # the rows are the recipe's loss at w, which AWP's updates move


def _cfg(**changes) -> TrainConfig:
    values = dict(data="digits", recipe="pgd", eps=0.1, steps=1, epochs=1, batch_size=128, lr=2e-3, eval_steps=0,
                  lr_schedule="constant",  # onecycle starts at lr 0: a first step that moves nothing
                  val_attack_steps=1, amp=None, channels_last=False, seed=1)
    return TrainConfig(**{**values, **changes})


class _Stop(Exception):
    pass


def _steps(cfg: TrainConfig, run, monkeypatch, n: int = 4) -> list[dict]:
    """The weights and gradients of the first ``n`` optimizer steps of a run of ``cfg``: what each
    starts from (the last step's result), the weights and gradients it is given, its result."""
    steps: list[dict] = []
    make = loop.make_optimizer

    def recording(model, cfg):
        opt = make(model, cfg)
        params = [p for group in opt.param_groups for p in group["params"]]
        start = [p.detach().clone() for p in params]

        def before(*_):
            steps.append({"start": steps[-1]["after"] if steps else start,
                          "before": [p.detach().clone() for p in params], "grad": [p.grad.clone() for p in params]})

        def after(*_):
            steps[-1]["after"] = [p.detach().clone() for p in params]
            if len(steps) == n:
                raise _Stop

        opt.register_step_pre_hook(before)
        opt.register_step_post_hook(after)
        return opt

    monkeypatch.setattr(loop, "make_optimizer", recording)
    with pytest.raises(_Stop):
        train(cfg, run, progress=False)
    monkeypatch.undo()
    return steps


def test_every_step_is_taken_from_the_weights_themselves_with_the_gradient_at_w_plus_v(tmp_path, monkeypatch):
    plain = _steps(_cfg(), tmp_path / "plain", monkeypatch)
    perturbed = _steps(_cfg(awp=0.01), tmp_path / "awp", monkeypatch)
    # between two optimizer steps the weights are back where the last step left them, bit for bit:
    # the perturbation is gone before each step
    for step in perturbed:
        assert all(torch.equal(b, s) for b, s in zip(step["before"], step["start"]))
        assert any(not torch.equal(a, s) for a, s in zip(step["after"], step["start"]))  # and the step moved them
    # the first step starts from the same weights and the same attack points as without --awp,
    # but with another gradient: the one at w + v
    assert all(torch.equal(a, b) for a, b in zip(perturbed[0]["before"], plain[0]["before"]))
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-7) for a, b in zip(perturbed[0]["grad"], plain[0]["grad"]))


@pytest.mark.parametrize("bad", [-0.01, 0.5, True, "0.005", float("nan")])
def test_gamma_is_checked(bad):
    with pytest.raises(ToughenUsageError, match="awp must be a number >= 0 and <= 0.1") as e:
        _cfg(awp=bad).validate()
    assert "\n" not in str(e.value)
    _cfg(awp=0).validate()  # off, as None is


@pytest.mark.parametrize("recipe", ["fgsm", "free", "standard", "mix"])
def test_other_recipes_refuse_it(recipe):
    with pytest.raises(ToughenUsageError, match=rf"--awp applies to mart, pgd and trades; recipe {recipe} ") as e:
        _cfg(recipe=recipe, awp=0.005).validate()
    assert "\n" not in str(e.value)
    _cfg(recipe=recipe, awp=0).validate()


@pytest.mark.parametrize("extra,message", [
    (["--recipe", "fgsm", "--awp", "0.005"], "--awp applies to mart, pgd and trades; recipe fgsm"),
    (["--awp", "0.3"], "awp must be a number >= 0 and <= 0.1, got 0.3"),
])
def test_cli_usage_errors_are_one_line(extra, message, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, stderr = run_cli(["train", "--data", "digits", "--out", str(out), *extra], capsys)
    assert code == 2 and message in " ".join(stderr.split())
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()


def test_cli_trades_with_awp_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["train", "--recipe", "trades", "--awp", "0.005", "--data", "digits", "--epochs", "1",
                                    "--steps", "2", "--eval-steps", "2", "--amp", "fp32", "--out", str(out), "--json"],
                                   capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["awp"] == 0.005 and summary["recipe"] == "trades"
    assert 0 <= summary["robust_accuracy"] <= summary["clean_accuracy"] <= 1
    # trades-2 costs 4 standard epochs (K + 2); --awp adds a forward and a backward pass of its loss,
    # which looks at the clean and the adversarial batch: 2 more
    assert summary["cost_multiplier"] == pytest.approx(6.0)
    assert read_jsonl(out / "metrics.jsonl")[0]["cost_multiplier"] == pytest.approx(6.0)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["awp"] == 0.005
