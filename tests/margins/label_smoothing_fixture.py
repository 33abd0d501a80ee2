"""Measure what label smoothing does to the attack tests' robust fixture (tests/conftest.py:
small_cnn, PGD-5 training at eps 0.1 on digits, 8 epochs, fp32): for seeds 0-2 and label smoothing
0 / 0.1 / 0.2, the robust accuracy of the first 200 test digits under APGD-CE (50 steps), Square
(500 queries) and the `standard` suite, and each of the suite's attacks in turn.

    python tests/margins/label_smoothing_fixture.py     # about 4 minutes on one core

Not a test: the source of the numbers in conftest.py's comment and docs/training.md. A gap between
APGD-CE and the suite (and Square above APGD-CE) means the cross-entropy gradients understate
what an attack can do; that is why the fixture trains without label smoothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import toughen  # noqa: E402
from toughen.attacks import apgd, square  # noqa: E402
from toughen.data import load_data  # noqa: E402
from toughen.models import build_model  # noqa: E402
from toughen.train import TrainConfig, fit  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    splits = load_data("digits")
    x, y = splits.x_test[:200], splits.y_test[:200]

    def accuracy(model, inputs):
        with torch.no_grad():
            return (model(inputs).argmax(1) == y).float().mean().item()

    for seed in (0, 1, 2):
        for smoothing in (0.0, 0.1, 0.2):
            torch.manual_seed(seed)
            model = build_model("small_cnn", splits.input_shape, splits.num_classes, splits.mean, splits.std)
            cfg = TrainConfig(data="digits", recipe="pgd", eps=0.1, epochs=8, steps=5, lr=2e-3, seed=seed,
                              val_attack_steps=1, amp=None, channels_last=False, label_smoothing=smoothing)
            fit(model, splits, cfg, progress=False)
            model.eval()
            ce = accuracy(model, apgd(model, x, y, eps=0.1, steps=50, generator=torch.Generator().manual_seed(0)))
            sq = accuracy(model, square(model, x, y, eps=0.1, n_queries=500, generator=torch.Generator().manual_seed(0)))
            suite = toughen.evaluate(model, x, y, suite="standard", eps=0.1)
            print(f"seed {seed} smoothing {smoothing}: clean {accuracy(model, x):.3f}  apgd-ce-50 {ce:.3f}  "
                  f"square-500 {sq:.3f}  standard {suite['robust_accuracy']:.3f}  after each of the suite's "
                  f"attacks {[round(a['robust_accuracy'], 3) for a in suite['per_attack']]}  "
                  f"warnings {[w['indicator'] for w in suite['warnings']]}", flush=True)


if __name__ == "__main__":
    main()
