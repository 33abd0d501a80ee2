"""The HTML report: it renders in a real browser, escapes every string, and shows each section
once its data exists (including fields that later versions of training and the audit write)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from toughen.errors import ToughenUsageError
from toughen.report import build_report
from toughen.report.collect import short_attack
from toughen.report.plots import pareto_front
from toughen.runs import record_evaluation
from toughen.train import TrainConfig, train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _tiny_run(out: Path, recipe: str, **kw) -> Path:
    # mlp on digits, two epochs, one attack step: a complete run directory in about a second
    cfg = TrainConfig(data="digits", model="mlp", recipe=recipe, eps=0.1, epochs=2, steps=1, eval_steps=2,
                      val_attack_steps=1, **kw)
    train(cfg, out, progress=False)
    return out


def _eval(run_dir: Path, eps: float) -> None:
    from toughen.evaluation.run_eval import evaluate_run

    evaluate_run(run_dir, attack="pgd", eps=eps, steps=2, n=120)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    standard = _tiny_run(root / "standard", "standard")
    mix = _tiny_run(root / "mix", "mix", lam=0.5)
    for eps in (0.05, 0.1, 0.2):  # a robustness curve for one run
        _eval(mix, eps)
    return standard, mix


@pytest.fixture(scope="module")
def report_html(two_runs, tmp_path_factory):
    path = build_report(list(two_runs), tmp_path_factory.mktemp("html") / "report.html", gallery_n=4,
                        gallery_steps=2)
    return path, path.read_text()


def test_report_has_every_section_whose_data_exists(report_html):
    _, page = report_html
    for section in ("summary", "tradeoff", "robustness", "training", "per-class", "gallery"):
        assert f'id="{section}"' in page
    assert 'id="audit"' not in page, "no audit.json was written, so no audit section"
    assert "mix λ=0.5 ε=0.1" in page  # the trade-off's label names recipe, lam and eps
    assert page.count('alt="adversarial input"') == 2 * 4
    # self-contained: every image inline, nothing fetched, no script
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_numbers_in_the_report_come_from_the_run(two_runs, report_html):
    _, page = report_html
    _, mix = two_runs
    rows = [json.loads(line) for line in (mix / "evaluations.jsonl").read_text().splitlines()]
    at_train_eps = [r for r in rows if r["eps"] == 0.1]
    summary = json.loads((mix / "summary.json").read_text())
    robust = min([r["robust_accuracy"] for r in at_train_eps] + [summary["robust_accuracy"]])
    assert f"<b>{100 * robust:.1f}%</b>" in page


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


# Injected only into a copy of the page, for the test: collects load errors and, after the load
# event, the state of every image and the page's width.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => __errors.push(String(e.message || (e.target && e.target.src || '').slice(0, 60))), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const t = document.getElementById('tradeoff-plot');
  const out = {images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    tradeoff: !!t && t.naturalWidth > 0, gallery: document.querySelectorAll('#gallery .card img').length,
    errors: __errors};
  const pre = document.createElement('pre'); pre.id = '__probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it: apt-get install chromium)")
def test_report_renders_in_headless_chromium(report_html, tmp_path):
    path, page = report_html
    shot = tmp_path / "report.png"
    proc = _chromium(["--window-size=1280,2000", f"--screenshot={shot}", path.as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000, "the screenshot is missing or blank"
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], f"console messages (errors, blocked loads): {console}"

    # The probe needs scripts, which the page's Content-Security-Policy forbids: relax it in the copy.
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
                      .replace("<head>", "<head>" + PROBE, 1))
    for width in (1280, 1024):  # a laptop screen: nothing may need sideways scrolling
        proc = _chromium([f"--window-size={width},900", "--dump-dom", probed.as_uri()], tmp_path)
        found = re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout)
        assert found, proc.stderr[-2000:]
        probe = json.loads(found.group(1).replace("&quot;", '"'))
        assert probe["errors"] == [] and probe["broken"] == 0, probe
        assert probe["images"] >= 3 + 2 * 3 * 4, probe  # trade-off, curves, 2 galleries of 4 x 3 tiles
        assert probe["tradeoff"] and probe["gallery"] == 2 * 3 * 4, probe
        assert probe["scrollWidth"] <= probe["innerWidth"], f"horizontal scrolling at {width}px: {probe}"


def test_class_names_run_names_and_audit_text_are_escaped(two_runs, tmp_path):
    evil = "<script>alert(1)</script>"
    run = tmp_path / "run<b>x"  # a file name is a string from the user too
    shutil.copytree(two_runs[1], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data_info"]["class_names"] = [evil] + [f"c{i}" for i in range(1, 10)]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    record_evaluation(run, {"attack": "pgd", "eps": 0.1, "norm": "linf", "clean_accuracy": 0.9,
                            "robust_accuracy": 0.05, "n": 10, "per_class_robust_accuracy": {evil: 0.5, "c1": 0.0}})
    (run / "audit.json").write_text(json.dumps({"verdict": evil, "checks": [
        {"name": evil, "status": "fail", "evidence": {"note": evil}}]}))
    page = build_report([run], tmp_path / "r.html", gallery_n=2, gallery_steps=1).read_text()
    assert "<script" not in page and "<b>x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the class name, shown as text
    assert "run&lt;b&gt;x" in page
    assert page.count("&lt;script&gt;") >= 4  # per-class row, gallery label, audit verdict and check


def test_upcoming_fields_render_once_they_exist(two_runs, tmp_path):
    """guard_event rows, best_epoch and cost_multiplier (training), suite rows with a curve
    (evaluation) and audit.json: each shows up in the page when present."""
    run = tmp_path / "future"
    shutil.copytree(two_runs[1], run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[1]["guard_event"] = {"action": "restored epoch 1", "reason": "catastrophic overfitting"}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "best_epoch": 1, "cost_multiplier": 2.5}))
    per_attack = [{"attack": "apgd-ce", "robust_accuracy": 0.3, "seconds": 1.0},  # as toughen.evaluate writes it
                  {"attack": "square", "robust_accuracy": 0.123, "seconds": 2.0}]
    record_evaluation(run, {"suite": "standard", "eps": 0.1, "norm": "linf", "clean_accuracy": 0.8,
                            "robust_accuracy": 0.123, "n": 100, "per_attack": per_attack, "attack": "suite:standard",
                            "curve": [{"eps": 0.05, "robust_accuracy": 0.5}, {"eps": 0.1, "robust_accuracy": 0.123}]})
    (run / "audit.json").write_text(json.dumps({"verdict": "suspicious", "checks": [
        {"name": "gradient masking", "status": "suspicious", "evidence": "black-box stronger than white-box"}]}))
    page = build_report([run], tmp_path / "r.html", gallery=False).read_text()
    assert 'class="verdict verdict-suspicious"' in page
    assert "catastrophic overfitting" in page and "best 1" in page and "×2.5" in page
    assert "<b>12.3%</b>" in page and "suite standard" in page and "after apgd-ce: 30.0%" in page
    assert 'id="audit"' in page and "gradient masking" in page
    assert 'id="gallery"' not in page


def test_unfinished_run_is_reported_without_failing(two_runs, tmp_path):
    run = tmp_path / "half"
    shutil.copytree(two_runs[0], run)
    (run / "summary.json").unlink()
    (run / "model.safetensors").unlink()
    (run / "evaluations.jsonl").unlink(missing_ok=True)
    page = build_report([run], tmp_path / "r.html", gallery_n=2, gallery_steps=1).read_text()
    assert "(unfinished)" in page and "no model.safetensors" in page


def test_report_rejects_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(ToughenUsageError, match="neither a run directory"):
        build_report([tmp_path], tmp_path / "r.html")


def test_report_command_writes_the_page(two_runs, tmp_path, monkeypatch, capsys):
    from toughen.cli import main

    out = tmp_path / "cli.html"
    args = ["toughen", "report", *map(str, two_runs), "--out", str(out), "--gallery-n", "2", "--gallery-steps", "1"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0, capsys.readouterr().err
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.is_file() and 'id="tradeoff"' in out.read_text()
    monkeypatch.setattr(sys, "argv", ["toughen", "report", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "is not a directory" in capsys.readouterr().err


def test_pareto_front_keeps_exactly_the_undominated_points():
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = [tuple(p) for p in rng.random((rng.integers(1, 12), 2)).round(1)]
        front = set(pareto_front(pts))
        for i, (x, y) in enumerate(pts):
            dominated = any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in pts)
            assert (i in front) != dominated or pts.count((x, y)) > 1


def test_attack_labels_are_shortened_without_losing_strength():
    assert short_attack("pgd(early_stop=True,loss=ce,restarts=1,steps=100)") == "pgd-100"
    assert short_attack("pgd(early_stop=True,loss=margin,restarts=5,steps=20)") == "pgd-20 margin x5"
    assert short_attack("fgsm") == "fgsm"


def test_tensorboard_flag_says_what_to_install_when_the_package_is_missing(monkeypatch, tmp_path):
    from toughen.report.tensorboard import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(ToughenUsageError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_tensorboard_logs_each_epoch(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from toughen.report.tensorboard import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "tb")
    train(TrainConfig(data="digits", model="mlp", recipe="standard", epochs=2, eval_steps=0, val_attack_steps=1),
          tmp_path / "run", progress=False, on_epoch=logger)
    logger.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_clean_accuracy")] == [1, 2]
    assert torch.isfinite(torch.tensor([e.value for e in acc.Scalars("loss")])).all()


def test_gallery_takes_one_example_per_class_in_turn(digits):
    from toughen.report.gallery import pick_examples

    idx = pick_examples(digits.y_test, 25)
    assert len(set(idx.tolist())) == 25
    classes = digits.y_test[idx].tolist()
    assert sorted(classes[:10]) == list(range(10)) and sorted(classes[10:20]) == list(range(10))
    assert idx[0] == (digits.y_test == digits.y_test[idx[0]]).nonzero()[0].item()  # the first of its class


def test_train_tensorboard_flag_fails_before_training_when_missing(monkeypatch, capsys, tmp_path):
    from toughen.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(sys, "argv", ["toughen", "train", "--data", "digits", "--out", str(tmp_path / "r"),
                                      "--tensorboard"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "pip install 'toughen[tensorboard]'" in capsys.readouterr().err  # brackets not eaten as markup
    assert not (tmp_path / "r").exists()


def test_report_reads_text_runs(tmp_path):
    """A text run is reported by its edit budget, with its adversarial texts instead of an image
    gallery; an image run beside it keeps its ε."""
    from toughen.text.injection import generate
    from toughen.text.train import TextTrainConfig, train_text

    texts, labels = generate(200, seed=3)
    data = tmp_path / "pi.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(texts, labels)))
    run = tmp_path / "text_run"
    train_text(TextTrainConfig(data=f"jsonl:{data}", recipe="standard", epochs=1, budget=3, val_n=20), run,
               progress=False)
    out = build_report([run], tmp_path / "report.html", gallery=True)
    html = out.read_text()
    assert "Adversarial texts" in html and "at most 3 edits" in html and "k=3" in html
    assert 'id="gallery"' not in html  # no image gallery attempted for a text run
    summary = json.loads((run / "summary.json").read_text())
    assert f"{100 * summary['robust_accuracy']:.1f}%" in html
