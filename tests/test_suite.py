"""The worst-case suite: cascade semantics, the loader variant, the curve, resume, and the CLI."""

import json
import math

import pytest
import torch

import toughen
from toughen.attacks import ATTACKS, Attack, fgsm
from toughen.errors import ToughenUsageError
from toughen.evaluation import evaluate_loader, robustness_curve
from conftest import run_cli

PGD5 = Attack("pgd", {"steps": 5, "early_stop": True})


def test_suite_is_the_worst_case_over_its_attacks(robust_model, test_batch):
    x, y = test_batch
    r = toughen.evaluate(robust_model, x, y, suite=[Attack("fgsm"), PGD5], eps=0.1)
    with torch.no_grad():
        clean = robust_model(x).argmax(1) == y
        fgsm_robust = robust_model(fgsm(robust_model, x, y, eps=0.1)).argmax(1) == y  # deterministic
    robust = r["robust"]
    assert robust.dtype == torch.bool and robust.shape == (len(x),)
    assert not (robust & ~clean).any(), "an example wrong on clean input counted as robust"
    assert not (robust & ~fgsm_robust).any(), "an example FGSM fools counted as robust"
    accs = [p["robust_accuracy"] for p in r["per_attack"]]
    assert accs == sorted(accs, reverse=True) and accs[0] == pytest.approx(fgsm_robust.float().mean().item())
    assert r["robust_accuracy"] == accs[-1] == pytest.approx(robust.float().mean().item())
    assert r["robust_accuracy"] < accs[0], "PGD should fool some examples FGSM missed"
    assert r["clean_accuracy"] == pytest.approx(clean.float().mean().item())
    assert r["n"] == len(x) and r["suite"] == "custom" and all(p["seconds"] >= 0 for p in r["per_attack"])


def test_quick_suite_is_at_most_pgd20_alone(robust_model, test_batch):
    x, y = test_batch
    pgd20 = toughen.evaluate(robust_model, x, y, suite=[Attack("pgd", {"steps": 20, "loss": "ce", "early_stop": True})],
                             eps=0.1)
    quick = toughen.evaluate(robust_model, x, y, suite="quick", eps=0.1)
    assert quick["suite"] == "quick" and [p["attack"] for p in quick["per_attack"]] == ["pgd-20-ce", "pgd-20-margin"]
    # quick's first attack is the same PGD-20 with the same seed, so this holds exactly.
    assert quick["per_attack"][0]["robust_accuracy"] == pgd20["robust_accuracy"]
    assert quick["robust_accuracy"] <= pgd20["robust_accuracy"]


def test_loader_variant_matches_tensors(robust_model, test_batch):
    x, y = test_batch
    batches = [(x[:120], y[:120]), (x[120:], y[120:])]
    r = evaluate_loader(robust_model, batches, suite=[PGD5], eps=0.1)
    first = toughen.evaluate(robust_model, x[:120], y[:120], suite=[PGD5], eps=0.1, batch_size=120)
    assert r["n"] == len(x) and r["robust"].shape == (len(x),)
    assert torch.equal(r["robust"][:120], first["robust"])  # batch 0 runs with the same seed
    assert r["robust_accuracy"] == pytest.approx(r["robust"].float().mean().item())
    assert r["per_attack"][0]["robust_accuracy"] == pytest.approx(r["robust_accuracy"])


def test_robustness_curve_falls_with_eps(robust_model, test_batch):
    x, y = test_batch
    curve = robustness_curve(robust_model, x, y, [0.2, 0.0, 0.05, 0.1], suite=[PGD5])
    assert [c["eps"] for c in curve] == [0.0, 0.05, 0.1, 0.2]
    accs = [c["robust_accuracy"] for c in curve]
    assert accs == sorted(accs, reverse=True) and accs[-1] < accs[0]
    with torch.no_grad():
        assert accs[0] == pytest.approx((robust_model(x).argmax(1) == y).float().mean().item())


def test_interrupted_evaluation_resumes_from_its_state_file(robust_model, test_batch, tmp_path, monkeypatch):
    x, y = test_batch
    state = tmp_path / "eval_state.json"
    suite = [Attack("fgsm"), PGD5]
    reference = toughen.evaluate(robust_model, x, y, suite=suite, eps=0.1, batch_size=40)
    real_pgd, calls = ATTACKS.get("pgd"), []

    def interrupted_pgd(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_pgd(*args, **kwargs)

    monkeypatch.setitem(ATTACKS._entries, "pgd", interrupted_pgd)
    with pytest.raises(KeyboardInterrupt):
        toughen.evaluate(robust_model, x, y, suite=suite, eps=0.1, batch_size=40, state_file=state)
    saved = json.loads(state.read_text())
    assert saved["attack"] == 1 and saved["batches_done"] == 2 and len(saved["per_attack"]) == 1

    calls.clear()
    monkeypatch.setitem(ATTACKS._entries, "pgd", lambda *a, **k: (calls.append(1), real_pgd(*a, **k))[1])
    resumed = toughen.evaluate(robust_model, x, y, suite=suite, eps=0.1, batch_size=40, state_file=state)
    n_batches = math.ceil(round(reference["per_attack"][0]["robust_accuracy"] * len(x)) / 40)
    assert len(calls) == n_batches - 2, "the two finished PGD batches ran again"
    assert torch.equal(resumed["robust"], reference["robust"])
    assert not state.exists(), "the state file outlived a finished evaluation"
    # A state file from other settings is ignored, not trusted.
    state.write_text(json.dumps({**saved, "key": "other"}))
    again = toughen.evaluate(robust_model, x, y, suite=suite, eps=0.1, batch_size=40, state_file=state)
    assert torch.equal(again["robust"], reference["robust"])


def test_bad_suites_are_refused(robust_model, test_batch):
    x, y = test_batch
    with pytest.raises(ToughenUsageError, match="quick, rand, standard, thorough"):
        toughen.evaluate(robust_model, x, y, suite="strong", eps=0.1)
    with pytest.raises(ToughenUsageError, match="non-empty list"):
        toughen.evaluate(robust_model, x, y, suite=[], eps=0.1)
    with pytest.raises(ToughenUsageError, match="8/255"):
        toughen.evaluate(robust_model, x, y, suite="quick", eps=8)


# ----------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from toughen.train import TrainConfig, train

    out = tmp_path_factory.mktemp("suite") / "run"
    train(TrainConfig(data="digits", recipe="pgd", eps=0.1, epochs=1, steps=2, eval_steps=0), out, progress=False)
    return out




def test_eval_suite_json_keeps_the_foundation_keys_and_adds_the_suite(run_dir, capsys):
    code, out, _ = run_cli(["eval", str(run_dir), "--suite", "quick", "--eps-sweep", "0.05,0.1", "--n", "60", "--json"],
                        capsys)
    assert code == 0
    r = json.loads(out)
    for key in ("clean_accuracy", "robust_accuracy", "attack", "eps", "norm", "n", "seconds",
                "per_class_robust_accuracy", "suite", "per_attack", "curve"):
        assert key in r, key
    assert r["suite"] == "quick" and r["n"] == 60 and r["attack"] == "suite:quick"
    assert [p["attack"] for p in r["per_attack"]] == ["pgd-20-ce", "pgd-20-margin"]
    assert [c["eps"] for c in r["curve"]] == [0.05, 0.1]
    assert r["curve"][1]["robust_accuracy"] <= r["curve"][0]["robust_accuracy"]
    rows = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert rows[-1]["suite"] == "quick" and rows[-1]["per_attack"] == r["per_attack"]
    assert not (run_dir / "eval_state.json").exists()


def test_eval_suite_usage_errors_exit_2(run_dir, capsys):
    code, _, err = run_cli(["eval", str(run_dir), "--suite", "nope"], capsys)
    assert code == 2 and "choose one of" in err
    code, _, err = run_cli(["eval", str(run_dir), "--suite", "quick", "--attack", "fgsm"], capsys)
    assert code == 2 and "not both" in err
    code, _, err = run_cli(["eval", str(run_dir), "--eps-sweep", "0.1,x"], capsys)
    assert code == 2 and "--eps-sweep" in err


def test_fast_layout_gives_the_same_answer_and_leaves_the_model_as_it_was(robust_model, test_batch):
    """The suite runs image models channels-last (faster kernels, same arithmetic up to rounding)
    and puts the model back in its own memory format afterwards."""
    x, y = test_batch
    x, y = x[:100], y[:100]
    conv = next(p for p in robust_model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous()
    results = [toughen.evaluate(robust_model, x, y, suite="quick", eps=0.3, fast_layout=fast) for fast in (True, False)]
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    assert (results[0]["robust"] != results[1]["robust"]).sum() <= 1  # a boundary case may round either way
