"""A recipe is declared in one place (issue 15): its function and a dataclass of its parameters.

Here a one-line variant of pgd with one parameter of its own is registered by this module alone,
and the config, the ``train`` command's flags, the sweep's grid and the report's labels all know
it, with nothing else edited.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import yaml

from conftest import run_cli
from toughen.errors import ToughenUsageError
from toughen.report import load_run
from toughen.sweep import parse_grid, plan
from toughen.train import TrainConfig
from toughen.train._registry import (RECIPES, declared_parameters, param, register_recipe, traits,
                                     unregister_recipe)
from toughen.train.recipes import madry

SEEN: list[float] = []  # the adv_weight each call of the recipe read


@dataclass(frozen=True)
class ScaledParams:
    adv_weight: float = param(2.0, "Weight of the adversarial loss.", low=0)


def scaled_pgd(model, x, y, ctx):
    """Madry's objective times adv_weight: the one line of this recipe (and a record of the value)."""
    SEEN.append(w := ctx.params_for(ScaledParams).adv_weight)
    return dataclasses.replace(out := madry(model, x, y, ctx), loss=w * out.loss)


@pytest.fixture
def scaled_pgd_registered():
    register_recipe("scaled_pgd", params=ScaledParams)(scaled_pgd)
    SEEN.clear()
    yield
    unregister_recipe("scaled_pgd")


def test_the_config_derives_its_keys_defaults_and_checks_from_the_declaration(scaled_pgd_registered):
    assert declared_parameters()["adv_weight"].recipes == ("scaled_pgd",)
    assert traits("scaled_pgd").parameters == ("adv_weight",)
    assert TrainConfig(recipe="scaled_pgd").adv_weight == 2.0
    cfg = TrainConfig.from_dict({"recipe": "scaled_pgd", "adv_weight": 0.5}).validate()
    assert cfg.adv_weight == 0.5 and cfg.to_dict()["adv_weight"] == 0.5
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ToughenUsageError, match="adv_weight must be a number >= 0"):
        TrainConfig(recipe="scaled_pgd", adv_weight=-1.0).validate()


def test_once_unregistered_the_parameter_is_gone_everywhere(scaled_pgd_registered):
    unregister_recipe("scaled_pgd")
    try:
        assert "adv_weight" not in declared_parameters()
        with pytest.raises(ToughenUsageError, match="unknown config keys: adv_weight"):
            TrainConfig.from_dict({"adv_weight": 0.5})
    finally:
        register_recipe("scaled_pgd", params=ScaledParams)(scaled_pgd)  # for the fixture's teardown


def test_a_parameter_declared_twice_must_be_declared_alike():
    @dataclass(frozen=True)
    class OtherBeta:
        beta: float = param(1.0, "Not trades' beta.", low=0)

    with pytest.raises(ValueError, match="declares parameter beta unlike trades, mart"):
        register_recipe("other_beta", params=OtherBeta)(scaled_pgd)
    assert "other_beta" not in RECIPES


def test_the_cli_trains_it_and_the_report_labels_it(scaled_pgd_registered, tmp_path, capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0 and "--adv-weight" in out
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", "digits", "--model", "mlp", "--recipe", "scaled_pgd",
                            "--adv-weight", "1/4", "--epochs", "1", "--steps", "2", "--eval-steps", "2",
                            "--eps", "0.1", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    assert SEEN and set(SEEN) == {0.25}  # the flag's value reached every call of the recipe
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["adv_weight"] == 0.25
    assert load_run(run).label().startswith("scaled_pgd adv_weight=0.25 ")
    code, _, err = run_cli(["train", "--data", "digits", "--recipe", "scaled_pgd", "--adv-weight", "-1",
                            "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "adv_weight must be a number >= 0" in err and not (tmp_path / "bad").exists()


def test_the_sweep_varies_it_only_for_its_recipe(scaled_pgd_registered):
    points = plan(parse_grid("recipe=pgd,scaled_pgd adv_weight=0.5,1"), {})
    assert [p["values"] for p in points] == [
        {"recipe": "pgd"}, {"recipe": "scaled_pgd", "adv_weight": 0.5}, {"recipe": "scaled_pgd", "adv_weight": 1.0}]
    with pytest.raises(ToughenUsageError, match="adv_weight applies only to the recipe.s. scaled_pgd"):
        plan(parse_grid("recipe=pgd adv_weight=0.5"), {})
