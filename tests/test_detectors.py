"""Text detectors: at an operating point (ROC AUC against scikit-learn, the threshold keeps the
false-positive budget on the split it was chosen on, the thresholded model decides exactly at the
threshold, an evasion the attack reports is a text scoring below the threshold), and on an injection
style held out of training (per-family numbers through the CLI and the report)."""

import json

import pytest
import torch

from toughen.errors import ToughenUsageError
from toughen.text.injection import generate
from toughen.text.models import build_text_model, predict
from toughen.text.operating_point import AtThreshold, detector_scores, operating_point, roc_auc, threshold_at_fpr
from conftest import run_cli


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_agrees_with_scikit_learn_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 12, (300,), generator=g).double() / 3  # many ties
    labels = torch.rand(300, generator=g) < 0.3
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    assert roc_auc(torch.arange(10.0), torch.arange(10) >= 5) == 1.0  # separable
    assert roc_auc(torch.zeros(10), torch.arange(10) >= 5) == 0.5  # all tied


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.3])
def test_threshold_flags_at_most_the_budget_and_is_the_lowest_such(fpr):
    g = torch.Generator().manual_seed(0)
    neg = torch.cat([torch.randn(400, generator=g), torch.full((20,), 1.5)]).double()  # a tied block
    t = threshold_at_fpr(neg, fpr)
    flagged = (neg >= t).double().mean().item()
    assert flagged <= fpr
    lower = neg[neg < t].max()  # the next score down: flagging it too would break the budget
    assert (neg >= lower).double().mean().item() > fpr
    with pytest.raises(ToughenUsageError, match="false-positive budget"):
        threshold_at_fpr(neg, 1.0)


@pytest.fixture(scope="module")
def detector():
    """char_cnn trained a few epochs on generated prompt injections: a real, imperfect detector."""
    texts, labels = generate(700, seed=11)
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = build_text_model("char_cnn", 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_texts, train_y = texts[:400], y[:400]
    for _ in range(4):
        for i in range(0, 400, 32):
            ids, mask = model.encode(train_texts[i:i + 32])
            loss = torch.nn.functional.cross_entropy(model(ids, mask), train_y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, (texts[400:550], y[400:550]), (texts[550:], y[550:])


def test_thresholded_model_decides_at_the_threshold(detector):
    model, _, (texts, _) = detector
    scores = detector_scores(model, texts).sort().values
    mid = len(scores) // 2
    t = float((scores[mid] + scores[mid + 1]) / 2)  # between two texts' scores: no tie to round
    scores = detector_scores(model, texts)
    wrapped = AtThreshold(model, t)
    assert torch.equal(predict(wrapped, texts).argmax(1), (scores >= t).long())
    assert wrapped.max_len == model.max_len and wrapped.embedding is model.embedding  # the attacks' attributes


def test_evasion_at_the_threshold_is_a_score_below_it(detector):
    model, (val_texts, y_val), (texts, y) = detector
    op = operating_point(model, val_texts, y_val, texts, y, attack="char_obfuscate", budget=2, fpr=0.05)
    assert op["val_fpr"] <= 0.05
    assert 0.5 < op["roc_auc"] <= 1 and 0 <= op["detection_rate"] <= 1 and 0 <= op["test_fpr"] <= 1
    assert 0 < op["n_detected"] and 0 <= op["evasion_rate_at_threshold"] <= 1
    # the same attack, run by hand: each success is a text the original model scores below the threshold
    t = op["threshold_log_odds"]
    scores = detector_scores(model, texts)
    detected = [i for i in range(len(texts)) if y[i] == 1 and scores[i] >= t]
    assert len(detected) == op["n_detected"]
    from toughen.text.attacks import TEXT_ATTACKS

    res = TEXT_ATTACKS.get("char_obfuscate")(AtThreshold(model, t), [texts[i] for i in detected],
                                             y[detected], budget=2, generator=torch.Generator().manual_seed(0))
    adv_scores = detector_scores(model, res.adv_texts)
    assert torch.equal(res.success, adv_scores < t)
    assert res.success.float().mean().item() == pytest.approx(op["evasion_rate_at_threshold"])


def test_operating_point_refuses_more_than_two_classes():
    model = build_text_model("char_cnn", 3).eval()
    with pytest.raises(ToughenUsageError, match="binary detectors"):
        operating_point(model, ["a", "b"], torch.tensor([0, 1]), ["c"], torch.tensor([1]))


def test_cli_text_eval_reports_the_operating_point(tmp_path, capsys):
    import csv

    from toughen.text.train import TextTrainConfig, train_text

    texts, labels = generate(300, seed=5)
    path = tmp_path / "pi.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["body", "kind"])
        w.writerows([t, "injection" if y else "benign"] for t, y in zip(texts, labels))
    run = tmp_path / "run"
    train_text(TextTrainConfig(data=f"csv:{path}", text_column="body", label_column="kind", recipe="standard",
                               epochs=2), run, progress=False)
    code, out, err = run_cli(["eval", str(run), "--attack", "char_obfuscate", "--budget", "2", "--n", "40",
                              "--fpr", "0.05", "--json"], capsys)
    assert code == 0, err
    op = json.loads(out)["operating_point"]
    assert op["positive_class"] == "injection" and op["fpr_budget"] == 0.05 and op["val_fpr"] <= 0.05
    assert {"roc_auc", "detection_rate", "test_fpr", "evasion_rate_at_threshold", "n_detected"} <= set(op)
    rows = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert rows[-1]["operating_point"]["threshold_log_odds"] == op["threshold_log_odds"]
    code, out, err = run_cli(["eval", str(run), "--attack", "char_obfuscate", "--budget", "2", "--n", "40"], capsys)
    assert code == 0 and "false positives on the validation split" in out
    # the report shows the detector's operating point
    from toughen.report import build_report

    html = build_report([run], tmp_path / "report.html", gallery=False).read_text()
    assert 'id="detectors"' in html and f"{op['roc_auc']:.3f}" in html and f"{100 * op['detection_rate']:.1f}%" in html


def test_cli_holdout_family_trains_without_it_and_reports_per_family(tmp_path, capsys):
    run = tmp_path / "held"
    code, out, err = run_cli(["train", "--data", "prompt_injection", "--model", "char_cnn", "--recipe", "standard",
                              "--epochs", "1", "--budget", "1", "--holdout-family", "game", "--out", str(run),
                              "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["holdout_family"] == "game" and set(summary["per_family"]) == {"benign", "game"}
    code, out, err = run_cli(["eval", str(run), "--attack", "char_obfuscate", "--budget", "1", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    fam = result["per_family"]
    assert result["holdout_family"] == "game" and fam["game"]["n"] == 86 and fam["benign"]["n"] == result["n"] - 86
    for r in fam.values():
        assert 0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1
    from toughen.report import build_report

    html = build_report([run], tmp_path / "report.html", gallery=False).read_text()
    assert "game (held out)" in html and f"{100 * fam['game']['clean_accuracy']:.1f}%" in html
    code, _, err = run_cli(["train", "--data", "prompt_injection", "--holdout-family", "chess", "--epochs", "1",
                            "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "choose one of" in err
