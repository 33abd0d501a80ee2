"""Attacks under mixed precision: bf16 autocast on the CPU keeps PGD as strong as in fp32."""

import torch

from toughen.attacks import pgd


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_pgd_under_bf16_autocast_breaks_an_undefended_model(standard_model, test_batch):
    x, y = test_batch
    assert _accuracy(standard_model, x, y) > 0.9
    x_adv = pgd(standard_model, x, y, eps=0.3, steps=20, amp="bf16", generator=torch.Generator().manual_seed(0))
    # the perturbation is kept in fp32, inside the ball and the bounds
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # judged in full precision, as every accuracy is
    assert _accuracy(standard_model, x_adv, y) < 0.02


def test_bf16_pgd_is_as_strong_as_fp32_where_the_model_is_not_broken(standard_model, test_batch):
    """At a smaller eps, where fp32 PGD leaves some accuracy, bf16 gradients (about 3 significant
    digits) find nearly as many adversarial examples: the sign of the gradient survives."""
    x, y = test_batch
    accs = {}
    for amp in (None, "bf16"):
        x_adv = pgd(standard_model, x, y, eps=0.08, steps=10, amp=amp, generator=torch.Generator().manual_seed(0))
        accs[amp] = _accuracy(standard_model, x_adv, y)
    assert accs[None] < 0.8  # the comparison means something: fp32 PGD fools a good part
    assert abs(accs["bf16"] - accs[None]) <= 0.05, accs

