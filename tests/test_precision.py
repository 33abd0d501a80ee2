"""Automatic precision and memory layout: the probe's decision rule, and that timing a model
leaves it as it was."""

from __future__ import annotations

import pytest
import torch

import toughen.precision as precision
from toughen.errors import ToughenUsageError
from toughen.models import build_model
from toughen.precision import PROBE_MARGIN, Precision, choose_precision, parse_amp, resolve_amp


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(precision, "_MEASURED", {})


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", (1, 8, 8), 10, mean=[0.5], std=[0.25])
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    return model, x, y


def _fake_timings(monkeypatch, ms: dict[str, float]):
    """Make every candidate's pass take the given time (by label), without running it."""
    def fake_pass(model, x, y, candidate, parameters):
        return ms[precision._label(*candidate)] / 1000
    monkeypatch.setattr(precision, "_timed_pass", fake_pass)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)


def test_explicit_choices_are_kept_without_timing(monkeypatch):
    model, x, y = _model_and_batch()
    monkeypatch.setattr(precision, "_timed_pass", lambda *a: pytest.fail("timed an explicit choice"))
    p = choose_precision(model, x, y, amp="bf16", channels_last=False)
    assert p == Precision("bf16", False, "requested")


@pytest.mark.parametrize("ms, expected", [
    # bf16 channels-last is fastest by far: taken
    ({"fp32": 100, "fp32+CL": 60, "bf16": 50, "bf16+CL": 30}, ("bf16", True)),
    # bf16 slower than fp32 (a CPU without AMX): fp32 channels-last
    ({"fp32": 100, "fp32+CL": 60, "bf16": 130, "bf16+CL": 110}, (None, True)),
    # nothing beats fp32 contiguous by the margin: fp32 contiguous, never a guess that may be slower
    ({"fp32": 100, "fp32+CL": round(100 / (1 + PROBE_MARGIN) + 0.5, 2), "bf16": 99, "bf16+CL": 98},
     (None, False)),
])
def test_auto_takes_the_fastest_only_when_it_wins_by_the_margin(monkeypatch, ms, expected):
    model, x, y = _model_and_batch()
    _fake_timings(monkeypatch, ms)
    p = choose_precision(model, x, y)
    assert (p.amp, p.channels_last) == expected
    assert p.chosen_by == "measured" and p.timings_ms == ms


def test_bf16_is_not_a_candidate_without_bf16_instructions(monkeypatch):
    model, x, y = _model_and_batch()
    seen = []

    def record(model, x, y, candidate, parameters):
        seen.append(candidate)
        return 0.01
    monkeypatch.setattr(precision, "_timed_pass", record)
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    p = choose_precision(model, x, y)
    assert {a for a, _ in seen} == {None} and p.amp is None
    assert resolve_amp(model, x, y, "auto") is None


def test_a_hopeless_candidate_is_timed_once(monkeypatch):
    """Emulated bf16 (10x slower) costs one warm-up pass, not a round of timings."""
    model, x, y = _model_and_batch()
    calls = []

    def slow_bf16(model, x, y, candidate, parameters):
        calls.append(candidate)
        return 1.0 if candidate[0] == "bf16" else 0.01
    monkeypatch.setattr(precision, "_timed_pass", slow_bf16)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    p = choose_precision(model, x, y, repeats=3)
    assert p.amp is None
    assert calls.count(("bf16", False)) == 1 and calls.count(("bf16", True)) == 1
    assert calls.count((None, False)) == 4


def test_the_probe_leaves_the_model_and_random_state_as_they_were():
    model, x, y = _model_and_batch()
    model.train()
    model(x).sum().backward()  # a gradient the probe must not touch
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    state = torch.get_rng_state()
    p = choose_precision(model, x, y, parameters=True, repeats=1)
    assert p.chosen_by == "measured" and len(p.timings_ms) >= 2
    assert model.training
    assert all(q.is_contiguous() for q in model.parameters())
    assert all(torch.equal(g, q.grad) for g, q in zip(grads, model.parameters()))
    assert all(torch.equal(b, c) for b, c in zip(buffers, model.buffers()))
    assert torch.equal(state, torch.get_rng_state())


def test_the_probe_is_made_once_per_model_shape_and_batch(monkeypatch):
    model, x, y = _model_and_batch()
    first = choose_precision(model, x, y, repeats=1)
    monkeypatch.setattr(precision, "_timed_pass", lambda *a: pytest.fail("measured twice"))
    assert choose_precision(model, x, y, repeats=1) is first


def test_parse_amp_and_bad_values():
    assert [parse_amp(t) for t in ("auto", "FP32", "bf16", "fp16")] == ["auto", None, "bf16", "fp16"]
    with pytest.raises(ToughenUsageError, match="choose auto, fp32, bf16 or fp16"):
        parse_amp("int8")
    model, x, y = _model_and_batch()
    with pytest.raises(ToughenUsageError, match="channels_last"):
        choose_precision(model, x, y, channels_last="yes")
