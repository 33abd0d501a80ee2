"""benchmarks/bench_textattack.py's own arithmetic, without TextAttack installed: the edit count
every contender is judged by, and how toughen's budget becomes TextAttack's limits."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_textattack  # noqa: E402
from bench_textattack import osa_distance, textattack_limits  # noqa: E402
from conftest import osa_distance as full_osa  # noqa: E402  (the reference: the whole table)


def test_importing_the_script_does_not_import_textattack():
    assert "textattack" not in sys.modules and "flair" not in sys.modules
    assert len(bench_textattack.STOPWORDS) == 179


@pytest.mark.parametrize("a,b,d", [
    ("ignore", "ignore", 0), ("ignore", "ingore", 1),  # an adjacent swap is one edit (Levenshtein: 2)
    ("ignore", "іgnore", 1),  # a Cyrillic homoglyph: one substituted code point
    ("ignore", "ig\u200bnore", 1), ("ignore", "ignre", 1), ("ignore", "iggnore", 1), ("", "abc", 3),
    ("ignore previous", "1gn0re prev1ous", 3), ("ca", "abc", 3),  # OSA, not unrestricted Damerau-Levenshtein
])
def test_osa_distance_known_cases(a, b, d):
    assert osa_distance(a, b) == d == full_osa(a, b)


def test_osa_distance_matches_the_full_table():
    """Stripping the common prefix and suffix leaves the distance unchanged."""
    rng = random.Random(0)
    for _ in range(2000):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 10)))
        b = list(a)
        for _ in range(rng.randint(0, 4)):
            op, i = rng.randrange(4), rng.randint(0, len(b))
            if op == 0:
                b.insert(i, rng.choice("abc "))
            elif b and i < len(b):
                if op == 1:
                    del b[i]
                elif op == 2:
                    b[i] = rng.choice("abc ")
                elif i + 1 < len(b):
                    b[i], b[i + 1] = b[i + 1], b[i]
        b = "".join(b)
        assert osa_distance(a, b) == full_osa(a, b), (a, b)


def test_budget_becomes_textattack_limits():
    assert textattack_limits(3) == {"deepwordbug_max_edit_distance": 3, "pruthi_max_num_word_swaps": 3}
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError):
            textattack_limits(bad)
