"""Measuring accuracy: clean, and under attack (robust), per example."""

from toughen.evaluation.accuracy import attack_correct, clean_correct
from toughen.evaluation.attack_eval import evaluate_attack

__all__ = ["attack_correct", "clean_correct", "evaluate_attack"]
