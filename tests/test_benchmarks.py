"""The benchmark harness itself: its floor is a fair PGD, its timing alternates, its doc writer
touches only its own section. (The benchmarks are not run here; they take minutes.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_attacks  # noqa: E402
import common  # noqa: E402

from toughen.attacks import pgd  # noqa: E402


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_bare_floor_is_the_same_attack_as_toughen(standard_model, test_batch, norm, eps):
    """The bare loop that sets the speed floor computes exactly toughen's last-iterate PGD (same
    random start from the same generator, same steps): the speed comparison is like for like."""
    x, y = test_batch[0][:64], test_batch[1][:64]
    ours = pgd(standard_model, x, y, eps=eps, norm=norm, steps=5, step_size=eps / 4, keep_best=False,
               generator=torch.Generator().manual_seed(3))
    floor = bench_attacks.bare_pgd(standard_model, x, y, eps=eps, norm=norm, steps=5, alpha=eps / 4,
                                   generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(floor, ours, atol=1e-5, rtol=0)
    assert bench_attacks.check_result(x, floor, eps, norm) < 1e-5


def test_round_robin_rotates_and_pairs_inputs():
    calls = []
    contenders = {name: (lambda rep, name=name: calls.append((name, rep)) or rep) for name in "abc"}
    timed = common.round_robin(contenders, reps=3, warmup={"a": lambda: calls.append(("warm", -1))})
    assert calls[0] == ("warm", -1)
    rounds = [calls[1:4], calls[4:7], calls[7:10]]
    assert [r[0][0] for r in rounds] == ["a", "b", "c"]  # a different contender goes first each round
    assert all({rep for _, rep in r} == {i} for i, r in enumerate(rounds))  # one input per round
    assert all(t.results == [0, 1, 2] and len(t.seconds) == 3 for t in timed.values())


def test_write_section_replaces_only_its_own(tmp_path):
    doc = tmp_path / "benchmarks.md"
    common.write_section("a", "first A", doc)
    common.write_section("b", "B", doc)
    common.write_section("a", "second A", doc)
    text = doc.read_text()
    assert "second A" in text and "first A" not in text and "B" in text
    assert text.index("<!-- bench:a -->") < text.index("<!-- bench:b -->")  # kept in place
    doc.write_text(text + "\nhand-written notes\n")
    common.write_section("b", "B2", doc)
    assert "hand-written notes" in doc.read_text() and "B2" in doc.read_text()
