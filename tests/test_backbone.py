"""Robust fine-tuning of pretrained backbones (toughen.models.backbone): ``MODULE:FUNCTION`` with a
factory the test writes, and ``timm:NAME`` where timm is installed (it needs a torchvision built
for the installed torch, which this project's CPU build of torch does not have on PyPI: the timm
test is skipped there; docs/training.md says so).

The factory stands for a backbone pretrained elsewhere: 3-channel inputs, 5 classes of its own.
The test saves "pretrained" weights to a file, fine-tunes on digits (1 channel, 8 x 8, 10
classes) with pgd, and checks what a user relies on: the pretrained weights are the start, the
frozen warm-up trains only the new head, the model takes the dataset's images and bounds, a run's
factory is imported again only when TOUGHEN_TRUST_CODE=1 says so, and eval / audit / report work
on the run.
"""

from __future__ import annotations

import json
import uuid

import pytest
import torch
from safetensors.torch import save_file

from conftest import run_cli
from toughen.attacks import pgd
from toughen.errors import ToughenUsageError
from toughen.models import build_model
from toughen.models.backbone import Backbone, TRUST_CODE_ENV, load_start_weights
from toughen.runs import load
from toughen.train import TrainConfig, fit, train

FACTORY = """
import torch
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 5))
"""
HEAD = "6."  # the factory's last nn.Linear, replaced by a 10-class head


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    """A module MODULE:FUNCTION names (a fresh name: Python caches imported modules) and a file of
    its "pretrained" weights, drawn apart from any initialization the test could make."""
    import importlib

    tmp_path = tmp_path_factory.mktemp("factory")
    name = f"backbone_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        mp.chdir(tmp_path)
        gen = torch.Generator().manual_seed(11)
        net = importlib.import_module(name).make()
        pretrained = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in net.state_dict().items()}
        path = tmp_path / "pretrained.safetensors"
        save_file(pretrained, str(path))
        yield f"{name}:make", path, pretrained


def _body(model: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.net.state_dict().items() if not k.startswith(HEAD)}


def test_frozen_warmup_trains_only_the_new_head_from_the_pretrained_weights(factory, digits):
    spec, path, pretrained = factory
    torch.manual_seed(0)
    model = build_model(spec, digits.input_shape, digits.num_classes, image_size=16)
    load_start_weights(model, path)
    assert all(torch.equal(v, pretrained[k]) for k, v in _body(model).items())
    head_before = model.net.get_submodule("6").weight.clone()
    assert head_before.shape == (10, 32)  # a new head for the dataset's 10 classes
    cfg = TrainConfig(data="digits", model=spec, model_options={"image_size": 16}, recipe="pgd", eps=0.1, steps=2,
                      epochs=2, freeze_epochs=1, amp=None, channels_last=False, val_attack_steps=1, select="last")
    after: list[tuple[dict, torch.Tensor]] = []  # the weights after each epoch (fit's model is this object)
    fit(model, digits, cfg.validate(), progress=False,
        on_epoch=lambda row: after.append((_body(model), model.net.get_submodule("6").weight.clone())))
    (body1, head1), (body2, _) = after
    assert all(torch.equal(v, pretrained[k]) for k, v in body1.items()), "the frozen body moved"
    assert not torch.equal(head1, head_before), "the head did not train"
    assert any(not torch.equal(v, body1[k]) for k, v in body2.items()), "after the warm-up all of it trains"
    assert all(p.requires_grad for p in model.parameters())


def test_backbone_takes_the_datasets_images(factory, digits):
    spec, _, _ = factory
    model = build_model(spec, digits.input_shape, digits.num_classes, image_size=16).eval()
    x, y = digits.x_test[:16], digits.y_test[:16]
    assert model(x).shape == (16, 10)
    x_adv = pgd(model, x, y, eps=0.1, steps=3, generator=torch.Generator().manual_seed(0))
    # the perturbation lives in the dataset's 8 x 8 pixels, not the backbone's 16 x 16
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.fixture(scope="module")
def factory_run(factory, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("factory_run")
    spec, path, _ = factory
    cfg = TrainConfig(data="digits", model=spec, model_options={"image_size": 16}, weights=str(path), recipe="pgd",
                      eps=0.1, steps=2, epochs=2, freeze_epochs=1, lr=3e-3, amp=None, channels_last=False,
                      val_attack_steps=1, eval_steps=3, eval_n=100)
    summary = train(cfg, tmp_path / "run", progress=False)
    return tmp_path / "run", summary, spec


def test_a_factory_run_is_imported_again_only_when_trusted(factory_run, monkeypatch):
    run, summary, spec = factory_run
    assert 0 <= summary["robust_accuracy"] <= summary["clean_accuracy"] <= 1  # two short epochs: no claim on learning
    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)
    with pytest.raises(ToughenUsageError, match=TRUST_CODE_ENV):
        load(run)
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    model = load(run)
    assert isinstance(model, Backbone) and model.adapt.size == 16


def test_eval_audit_and_report_work_on_a_factory_run(factory_run, monkeypatch, capsys):
    run, _, _ = factory_run
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    code, out, err = run_cli(["eval", str(run), "--n", "50", "--steps", "3", "--json"], capsys)
    assert code == 0, err
    assert 0 <= json.loads(out)["robust_accuracy"] <= 1
    code, _, err = run_cli(["audit", str(run), "--n", "20", "--steps", "3", "--queries", "20"], capsys)
    assert code == 0, err
    assert (run / "audit.json").is_file()
    code, _, err = run_cli(["report", str(run)], capsys)
    assert code == 0, err
    assert "<html" in (run / "report.html").read_text()[:500].lower()


def test_weights_that_do_not_fit_are_a_clear_error(factory, digits, tmp_path):
    spec, _, _ = factory
    model = build_model(spec, digits.input_shape, digits.num_classes)
    bad = tmp_path / "other.safetensors"
    save_file({"0.weight": torch.zeros(8, 1, 3, 3), "stray": torch.zeros(2)}, str(bad))
    with pytest.raises(ToughenUsageError, match="does not fit the backbone.*missing.*not in the model.*other shapes"):
        load_start_weights(model, bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(ToughenUsageError, match="not a readable state dict"):
        load_start_weights(model, junk)


def test_bad_backbone_specs_are_clear_errors(digits, capsys):
    with pytest.raises(ToughenUsageError, match="timm:NAME or MODULE:FUNCTION"):
        TrainConfig(model="timm:").validate()
    with pytest.raises(ToughenUsageError, match="only these model options"):
        TrainConfig(model="timm:resnet18", model_options={"width": 2}).validate()
    with pytest.raises(ToughenUsageError, match="needs --model timm:NAME"):
        TrainConfig(model="small_cnn", freeze_epochs=1).validate()
    with pytest.raises(ToughenUsageError, match="cannot import"):
        build_model("no_such_module_xyz:make", digits.input_shape, digits.num_classes)


def test_timm_backbone_fine_tuned_with_pgd(tmp_path, digits, monkeypatch):
    timm = pytest.importorskip("timm")
    # a small timm network at random initialization, saved as the "pretrained" file
    net = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    cfg = TrainConfig(data="digits", model="timm:resnet10t", model_options={"image_size": 32}, weights=str(path),
                      recipe="pgd", eps=0.1, steps=2, epochs=1, freeze_epochs=0, amp=None, channels_last=False,
                      val_attack_steps=1, eval_steps=3, eval_n=50, batch_size=64)
    summary = train(cfg, tmp_path / "run", progress=False)
    assert 0 <= summary["robust_accuracy"] <= summary["clean_accuracy"] <= 1
    model = load(tmp_path / "run")  # timm:NAME is a registry name, not code: no trust needed
    assert model(digits.x_test[:4]).shape == (4, 10)
