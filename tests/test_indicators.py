"""Indicators of attack failure (Pintor et al. 2022): silent on a healthy evaluation, each one
firing on a failure built for it, carried through resume, the loader, the CLI, the report and the
audit."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

import toughen
from toughen.attacks import ATTACKS, Attack, apgd, pgd
from toughen.attacks.trace import Trace, recording
from toughen.errors import ToughenUsageError
from toughen.evaluation import evaluate_loader
from toughen.evaluation import indicators as ind
from toughen.evaluation.audit import audit
from conftest import Quantized, Saturated, run_cli

EPS = 0.1  # the robust fixture's training eps
# AutoAttack's standard suite at small budgets: APGD-CE, APGD-T, Square
SMALL_STANDARD = [Attack("apgd", {"steps": 20, "loss": "ce"}),
                  Attack("apgd", {"steps": 20, "loss": "dlr", "n_target_classes": 3}),
                  Attack("square", {"n_queries": 300})]


@pytest.fixture(scope="module")
def batch(test_batch):
    x, y = test_batch
    return x[:64], y[:64]


def _fired(result, indicator):
    return [w for w in result["warnings"] if w["indicator"] == indicator]


def test_a_healthy_evaluation_raises_no_warning(robust_model, standard_model, batch):
    r = toughen.evaluate(robust_model, *batch, suite=SMALL_STANDARD, eps=EPS, surrogate=standard_model)
    assert r["warnings"] == [], r["warnings"]
    rows = r["indicators"]["attacks"]
    # The indicators did look: both APGD runs were traced, and every example they left robust measured.
    for row, after in zip(rows[:2], r["per_attack"]):
        assert row["traced"] == row["attacked"] > 0 and row["measured"] == round(after["robust_accuracy"] * 64) > 0
        assert row["silent"] == 0 and row["rising"] < ind.RISING_SHARE * row["measured"]
    assert rows[2]["traced"] == 0, "Square has no gradient steps to trace"
    assert [p["attack"] for p in r["per_attack"]][-1] == "transfer-pgd-50"
    assert r["indicators"]["unconstrained"]["n"] == ind.UNCONSTRAINED_N
    assert r["indicators"]["unconstrained"]["robust"] == 0
    quick = toughen.evaluate(robust_model, *batch, suite="quick", eps=EPS)
    assert quick["warnings"] == [], quick["warnings"]


def test_tracing_leaves_the_attacks_unchanged(robust_model, batch):
    x, y = batch[0][:16], batch[1][:16]
    for attack in (lambda g: pgd(robust_model, x, y, eps=EPS, steps=5, restarts=2, early_stop=True, generator=g),
                   lambda g: apgd(robust_model, x, y, eps=EPS, steps=10, loss="dlr", n_target_classes=2, generator=g)):
        plain = attack(torch.Generator().manual_seed(3))
        trace = Trace()
        with recording(trace):
            traced = attack(torch.Generator().manual_seed(3))
        assert torch.equal(plain, traced)
        assert len(trace.runs) >= 2 and all(run.steps for run in trace.runs)
        assert all(len(at) == len(loss) == len(fooled) for run in trace.runs for at, loss, fooled in run.steps)


def test_silent_success_counts_the_examples_an_attack_lost(robust_model, batch, monkeypatch):
    def forgetful(model, x, y, **threat):  # finds fooling points with PGD, then returns x
        pgd(model, x, y, steps=10, **threat)
        return x.clone()

    monkeypatch.setitem(ATTACKS._entries, "forgetful", forgetful)
    r = toughen.evaluate(robust_model, *batch, suite=[Attack("forgetful")], eps=EPS, batch_size=40)
    honest = toughen.evaluate(robust_model, *batch, suite=[Attack("pgd", {"steps": 10})], eps=EPS, batch_size=40)
    fooled = round((honest["clean_accuracy"] - honest["robust_accuracy"]) * len(batch[0]))
    assert fooled >= 5 and _fired(honest, "silent_success") == []
    assert r["robust_accuracy"] == r["clean_accuracy"], "returning x fools nobody"
    (w,) = _fired(r, "silent_success")
    # the same generators, so the same PGD: every example it fooled was lost
    assert w["silent"] == fooled and w["attack"] == "forgetful" and str(fooled) in w["evidence"]


def test_a_randomized_model_is_traced_but_its_silent_successes_are_not_counted(robust_model, batch):
    class Noisy(nn.Module):  # a verdict at one point changes from pass to pass
        def __init__(self):
            super().__init__()
            self.gen = torch.Generator().manual_seed(0)

        def forward(self, x):
            return robust_model(x + 0.1 * torch.randn(x.shape, generator=self.gen))

    x, y = batch[0][:24], batch[1][:24]
    r = toughen.evaluate(Noisy(), x, y, suite=[Attack("apgd", {"steps": 10, "eot": 2})], eps=EPS, draws=3)
    (row,) = r["indicators"]["attacks"]
    assert row["traced"] == row["attacked"] > 0 and row["silent"] == 0 and _fired(r, "silent_success") == []


def test_incomplete_optimization_fires_on_a_starved_attack_only(robust_model, batch):
    starved = toughen.evaluate(robust_model, *batch, eps=EPS,
                               suite=[Attack("pgd", {"steps": 10, "step_size": EPS / 100, "early_stop": True})])
    (w,) = _fired(starved, "incomplete_optimization")
    assert w["rising"] >= ind.RISING_SHARE * w["measured"] and w["mean_tail_share"] > ind.RISE
    fed = toughen.evaluate(robust_model, *batch, eps=EPS, suite=[Attack("pgd", {"steps": 10, "early_stop": True})])
    assert _fired(fed, "incomplete_optimization") == []
    assert fed["robust_accuracy"] < starved["robust_accuracy"], "the starved attack did leave examples to fool"


def test_masked_gradients_fire_attack_order_and_unconstrained_and_the_audit_flags_them(robust_model, batch):
    masked = Quantized(robust_model)
    # Square at 1,000 queries fools 6 of the 64 (5 under ONEDNN_MAX_CPU_ISA=AVX2) against the
    # threshold of 4; at 300 queries it fooled 5 here but only 3 under AVX2.
    suite = [Attack("pgd", {"steps": 10, "early_stop": True}), Attack("square", {"n_queries": 1000})]
    r = toughen.evaluate(masked, *batch, suite=suite, eps=EPS)
    (order,) = _fired(r, "attack_order")
    assert order["attack"] == "pgd-10-ce" and order["later"] == "square-1000"
    assert order["later_fooled"] >= ind.MIN_COUNT and r["per_attack"][0]["robust_accuracy"] == r["clean_accuracy"]
    (unc,) = _fired(r, "unconstrained_failure")
    assert 0 < unc["robust"] <= unc["n"] == ind.UNCONSTRAINED_N
    report = audit(masked, *batch, eps=EPS, steps=5, n_queries=100)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["verdict"] == "suspicious"
    assert {c["indicator"] for c in report["checks"] if "indicator" in c} == {
        "unstable_predictions", "unavailable_gradients", "unconstrained_attack_failure", "silent_success",
        "incomplete_optimization", "transfer_failure"}
    assert checks["unbounded_attack_succeeds"]["status"] == "suspicious"
    assert checks["transfer_failure"]["status"] == "skipped" and "--surrogate" in checks["transfer_failure"]["evidence"]


def test_transfer_failure_fires_and_the_worst_case_keeps_what_transfer_fooled(robust_model, standard_model, batch):
    x, y = batch
    masked = Saturated(robust_model)  # APGD-CE sees no gradient; the surrogate's points still fool it
    r = toughen.evaluate(masked, x, y, suite=[Attack("apgd", {"steps": 20, "loss": "ce"})], eps=EPS,
                         surrogate=standard_model)
    (w,) = _fired(r, "transfer_failure")
    white, after = (round(p["robust_accuracy"] * len(x)) for p in r["per_attack"])
    assert w["fooled"] == white - after > 0 and w["attacked"] == white
    assert r["robust_accuracy"] == pytest.approx(after / len(x)) and int(r["robust"].sum()) == after
    # without the surrogate the same evaluation keeps those examples robust
    alone = toughen.evaluate(masked, x, y, suite=[Attack("apgd", {"steps": 20, "loss": "ce"})], eps=EPS)
    assert int(alone["robust"].sum()) == white and not (r["robust"] & ~alone["robust"]).any()
    with pytest.raises(ToughenUsageError, match="classes"):
        toughen.evaluate(masked, x, y, suite="quick", eps=EPS, surrogate=nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))


def test_a_resumed_evaluation_and_the_loader_add_up_to_the_same_counts(robust_model, batch, tmp_path, monkeypatch):
    x, y = batch
    suite = [Attack("pgd", {"steps": 10, "step_size": EPS / 100, "early_stop": True})]  # counts that fire
    reference = toughen.evaluate(robust_model, x, y, suite=suite, eps=EPS, batch_size=20)
    real_pgd, calls = ATTACKS.get("pgd"), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_pgd(*args, **kwargs)

    monkeypatch.setitem(ATTACKS._entries, "pgd", interrupted)
    state = tmp_path / "state.json"
    with pytest.raises(KeyboardInterrupt):
        toughen.evaluate(robust_model, x, y, suite=suite, eps=EPS, batch_size=20, state_file=state)
    assert json.loads(state.read_text())["indicators"]["attacks"][0]["attacked"] == 40
    monkeypatch.setitem(ATTACKS._entries, "pgd", real_pgd)
    resumed = toughen.evaluate(robust_model, x, y, suite=suite, eps=EPS, batch_size=20, state_file=state)
    assert resumed["indicators"] == reference["indicators"] and resumed["warnings"] == reference["warnings"]
    loader = evaluate_loader(robust_model, [(x[:32], y[:32]), (x[32:], y[32:])], suite=suite, eps=EPS)
    row = loader["indicators"]["attacks"][0]
    assert row["attacked"] == round(loader["clean_accuracy"] * len(x)) and _fired(loader, "incomplete_optimization")
    assert loader["indicators"]["unconstrained"]["n"] <= ind.UNCONSTRAINED_N  # the first batch's only


# ----------------------------------------------------------------------------- command line and report

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from toughen.train import TrainConfig, train

    root = tmp_path_factory.mktemp("indicators")
    train(TrainConfig(data="digits", recipe="pgd", eps=EPS, epochs=1, steps=2, eval_steps=0), root / "pgd",
          progress=False)
    train(TrainConfig(data="digits", model="mlp", recipe="standard", epochs=1, eval_steps=0), root / "standard",
          progress=False)
    return root / "pgd", root / "standard"


def test_eval_prints_records_and_reports_the_warnings(runs, monkeypatch, capsys, tmp_path):
    import toughen.evaluation.run_eval as run_eval
    from toughen.report import build_report

    run, surrogate = runs
    load = run_eval.load
    monkeypatch.setattr(run_eval, "load", lambda *a, **k: Quantized(load(*a, **k)))  # the evaluated model, masked
    code, out, err = run_cli(["eval", str(run), "--suite", "quick", "--n", "64", "--surrogate", str(surrogate)],
                             capsys)
    assert code == 0, err
    row = json.loads((run / "evaluations.jsonl").read_text().splitlines()[-1])
    assert row["surrogate"] == str(surrogate) and row["per_attack"][-1]["attack"] == "transfer-pgd-50"
    fired = {w["indicator"] for w in row["warnings"]}
    assert "unconstrained_failure" in fired
    for w in row["warnings"]:  # one line each, with its evidence
        assert f"warning: {w['indicator']} ({w['attack']})" in " ".join(out.split())
    page = build_report([run], tmp_path / "report.html", gallery=False).read_text()
    assert 'id="warnings"' in page and "unconstrained_failure" in page and "nearly the whole input range" in page


def test_eval_and_audit_surrogate_usage_errors_exit_2(runs, tmp_path, capsys):
    import shutil

    run, surrogate = runs
    code, _, err = run_cli(["eval", str(run), "--suite", "quick", "--surrogate", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not a toughen run directory" in err
    code, _, err = run_cli(["eval", str(run), "--attack", "pgd", "--surrogate", str(surrogate)], capsys)
    assert code == 2 and "--suite" in err
    other = tmp_path / "three_classes"
    shutil.copytree(surrogate, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["data_info"]["num_classes"] = 3
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    for args in (["eval", str(run), "--suite", "quick"], ["audit", str(run)]):
        code, _, err = run_cli([*args, "--surrogate", str(other)], capsys)
        assert code == 2 and "3 classes" in err and len(err.strip().splitlines()) == 1
