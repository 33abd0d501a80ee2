"""Measuring accuracy: clean, and under attack (robust), per example."""

from toughen.evaluate.accuracy import attack_correct, clean_correct
from toughen.evaluate.attack_eval import evaluate_attack

__all__ = ["attack_correct", "clean_correct", "evaluate_attack"]
