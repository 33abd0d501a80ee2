"""toughen: make PyTorch classifiers robust to adversarial inputs, and say honestly how robust.

    import toughen
    x_adv = toughen.attacks.pgd(model, x, y, eps=8 / 255)
    model = toughen.load("runs/demo")
"""

from toughen._version import __version__  # noqa: F401

from toughen import attacks, data, models, threat  # noqa: E402
from toughen.attacks import fgsm, list_attacks, pgd  # noqa: E402
from toughen.data import list_datasets, load_data  # noqa: E402
from toughen.evaluation.suite import evaluate  # noqa: E402
from toughen.models import build_model, list_models  # noqa: E402
from toughen.runs import load  # noqa: E402
from toughen import text  # noqa: E402,F401  (registers the "text" run kind with the core)

__all__ = [
    "attacks", "build_model", "data", "evaluate", "fgsm", "list_attacks", "list_datasets", "list_models", "load",
    "load_data", "models", "pgd", "threat",
]
