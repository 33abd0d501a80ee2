"""Weights that change inside one autocast region: autocast caches the low-precision copies of the
weights for the region's whole life, so a recipe that steps the optimizer inside it (free's
replays) must not run its next pass on the copies of the old weights. (AWP's own case is in
test_awp.py.) Exact comparisons on the same kernels: not in CI's second-ISA pass."""

import torch

from toughen.models import build_model
from toughen.train import TrainConfig, fit


def test_free_replays_see_each_step_under_autocast(digits, monkeypatch):
    """free steps the optimizer between its replays of a batch, inside one autocast region, whose
    cached bf16 copies of the weights would otherwise be the batch's first: the loop's run must
    equal a reference whose optimizer drops autocast's cache itself after every step."""
    def run():
        torch.manual_seed(0)
        model = build_model("small_cnn", digits.input_shape, digits.num_classes, digits.mean, digits.std)
        cfg = TrainConfig(data="digits", recipe="free", eps=0.1, epochs=1, batch_size=256, seed=0, amp="bf16",
                          channels_last=False, val_attack_steps=1, guard=False)
        return [row["loss"] for row in fit(model, digits, cfg, progress=False)]

    ours = run()
    real_step = torch.optim.Adam.step

    def step_then_drop_the_cache(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        torch.clear_autocast_cache()
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_drop_the_cache)
    assert ours == run()
