"""The published recipes in configs/ are valid TrainConfigs, and the on-device batch augmentation
(crop_pad, flip) that they use is seeded and changes what the model sees."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
import yaml

from toughen.errors import ToughenUsageError
from toughen.models import MODELS, build_model
from toughen.train import TrainConfig, fit, list_recipes

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_the_three_published_recipes_are_there():
    assert {p.name for p in CONFIGS} >= {"cifar10_fgsm_rs.yaml", "cifar10_pgd10_early_stop.yaml",
                                         "cifar10_trades_wrn34.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_file_is_a_valid_train_config(path):
    values = yaml.safe_load(path.read_text())
    cfg = TrainConfig.from_dict(values).validate()
    assert cfg.recipe in list_recipes()
    assert cfg.data == "cifar10" and abs(cfg.eps - 8 / 255) < 1e-12 and cfg.norm == "linf"
    assert cfg.crop_pad == 4 and cfg.flip  # the standard CIFAR-10 augmentation, as in every paper
    # the model accepts the options the file gives it
    params = inspect.signature(MODELS.get(cfg.model)).parameters
    assert set(cfg.model_options) <= set(params)


def test_config_values_are_the_papers():
    load = lambda name: TrainConfig.from_dict(yaml.safe_load((CONFIGS[0].parent / name).read_text()))  # noqa: E731
    fgsm = load("cifar10_fgsm_rs.yaml")
    assert (fgsm.model, fgsm.recipe, fgsm.epochs, fgsm.lr, fgsm.lr_schedule) == (
        "preact_resnet18", "fgsm_rs", 15, 0.2, "onecycle")
    pgd = load("cifar10_pgd10_early_stop.yaml")
    assert (pgd.recipe, pgd.steps, pgd.epochs, pgd.select, pgd.lr_schedule) == ("pgd", 10, 200, "best", "piecewise")
    assert abs(pgd.step_size - 2 / 255) < 1e-12
    trades = load("cifar10_trades_wrn34.yaml")
    assert (trades.recipe, trades.beta, trades.model, trades.model_options) == (
        "trades", 6.0, "wide_resnet", {"depth": 34, "width": 10})


def test_bad_augmentation_values_are_usage_errors():
    with pytest.raises(ToughenUsageError, match="crop_pad"):
        TrainConfig(crop_pad=-1).validate()
    with pytest.raises(ToughenUsageError, match="flip"):
        TrainConfig(flip="yes").validate()


def _first_epoch(digits, **values):
    """One epoch of standard training on 256 digits (validated on 64): cheap, and enough to tell."""
    small = dataclasses.replace(digits, x_train=digits.x_train[:256], y_train=digits.y_train[:256],
                                x_val=digits.x_val[:64], y_val=digits.y_val[:64])
    torch.manual_seed(0)
    model = build_model("small_cnn", small.input_shape, small.num_classes, small.mean, small.std)
    cfg = TrainConfig(data="digits", recipe="standard", epochs=1, lr=2e-3, batch_size=64, val_attack_steps=1,
                      eps=0.1, **values)
    return fit(model, small, cfg, progress=False)[0]


def test_batch_augmentation_is_seeded_and_changes_training(digits):
    plain = _first_epoch(digits)
    augmented = _first_epoch(digits, crop_pad=1, flip=True)
    again = _first_epoch(digits, crop_pad=1, flip=True)
    assert augmented["loss"] != plain["loss"]
    assert augmented["loss"] == again["loss"] and augmented["val_clean_accuracy"] == again["val_clean_accuracy"]


def test_compile_option_compiles_the_training_step_model(digits, monkeypatch):
    """With compile, the recipe runs through torch.compile's module (here a stand-in that records
    the call; a real compile takes tens of seconds on this CPU), and training still counts passes."""
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    row = _first_epoch(digits, compile=True)
    assert len(compiled) == 1 and row["forward_passes"] > 0
    assert _first_epoch(digits)["loss"] == row["loss"] and len(compiled) == 1
    with pytest.raises(ToughenUsageError, match="compile"):
        TrainConfig(compile="yes").validate()
