"""Measuring accuracy: clean, and under attack (robust), per example."""

from toughen.evaluation.accuracy import attack_correct, clean_correct
from toughen.evaluation.attack_eval import evaluate_attack
from toughen.evaluation.cascade import cascade
from toughen.evaluation.suite import SUITES, evaluate, evaluate_loader, list_suites, robustness_curve

__all__ = [
    "SUITES", "attack_correct", "cascade", "clean_correct", "evaluate", "evaluate_attack", "evaluate_loader",
    "list_suites", "robustness_curve",
]
