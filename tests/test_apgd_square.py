"""APGD and Square: the paper's schedules, agreement with PGD on the robust fixture, and Square
working with no gradient at all."""

import pytest
import torch
from torch import nn

from toughen.attacks import apgd, pgd, square
from toughen.attacks.apgd import checkpoints
from toughen.attacks.losses import dlr
from toughen.attacks.square import p_schedule
from toughen.errors import ToughenUsageError


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == []


def test_dlr_matches_its_formula_and_ignores_logit_scale():
    z = torch.tensor([[3.0, 1.0, 0.5, 0.0, -1.0]])
    y, t = torch.tensor([1]), torch.tensor([2])
    # untargeted: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3) = -(1 - 3) / (3 - 0.5)
    assert dlr(z, y).item() == pytest.approx(2 / 2.5)
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(1 - 0.5) / (3 - 0.25)
    assert dlr(z, y, t).item() == pytest.approx(-0.5 / 2.75)
    torch.testing.assert_close(dlr(1e4 * z + 7, y), dlr(z, y))
    with pytest.raises(ToughenUsageError, match="classes"):
        dlr(z[:, :2], torch.tensor([0]))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(norm, eps, robust_model, test_batch):
    x, y = test_batch
    # 20 forward-backward passes each.
    acc_pgd = _acc(robust_model, pgd(robust_model, x, y, eps=eps, norm=norm, steps=20, generator=_gen()), y)
    acc_apgd = _acc(robust_model, apgd(robust_model, x, y, eps=eps, norm=norm, steps=20, generator=_gen()), y)
    assert acc_apgd <= acc_pgd + 0.005
    assert acc_apgd < _acc(robust_model, x, y)


def test_targeted_apgd_dlr_breaks_an_undefended_model(standard_model, test_batch):
    x, y = test_batch
    x_adv = apgd(standard_model, x[:100], y[:100], eps=0.3, steps=10, loss="dlr", n_target_classes=3,
                 generator=_gen())
    assert _acc(standard_model, x[:100], y[:100]) > 0.9
    assert _acc(standard_model, x_adv, y[:100]) < 0.02


def test_apgd_restarts_only_add_fooled_examples(robust_model, test_batch):
    x, y = test_batch
    one = apgd(robust_model, x, y, eps=0.1, steps=10, restarts=1, generator=_gen(4))
    three = apgd(robust_model, x, y, eps=0.1, steps=10, restarts=3, generator=_gen(4))
    with torch.no_grad():
        fooled_one, fooled_three = robust_model(one).argmax(1) != y, robust_model(three).argmax(1) != y
    assert (fooled_three | ~fooled_one).all()  # the first restart is the very run `one`


def test_square_schedule_halves_p_at_the_papers_iterations():
    assert p_schedule(0.8, 10, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 9000, 10000) == 0.8 / 512
    assert p_schedule(0.8, 2, 1000) == 0.4  # rescaled: query 2 of 1,000 is query 20 of 10,000


class NoGradient(nn.Module):
    """Answers queries but refuses gradients: only a black-box attack can work on it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("this model gives no gradients")
        with torch.no_grad():
            return self.model(x)


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 3.0)])
def test_square_finds_adversarial_examples_without_gradients(norm, eps, standard_model, test_batch):
    x, y = test_batch
    x, y = x[:100], y[:100]
    blind = NoGradient(standard_model)
    x_adv = square(blind, x, y, eps=eps, norm=norm, n_queries=300, generator=_gen())
    assert _acc(standard_model, x, y) > 0.9
    assert _acc(standard_model, x_adv, y) < 0.1


def test_square_agrees_with_white_box_attacks_on_a_robust_model(robust_model, test_batch):
    """The fixture's gradients are honest: a black-box attack should find about what APGD finds,
    not much more (that would be gradient masking), and clearly more than nothing."""
    x, y = test_batch
    x, y = x[:100], y[:100]
    acc_apgd = _acc(robust_model, apgd(robust_model, x, y, eps=0.1, steps=50, generator=_gen()), y)
    acc_square = _acc(robust_model, square(robust_model, x, y, eps=0.1, n_queries=500, generator=_gen()), y)
    assert acc_square >= acc_apgd - 0.02
    assert acc_square <= _acc(robust_model, x, y) - 0.1


def test_square_refuses_bad_settings(robust_model, test_batch):
    x, y = test_batch
    with pytest.raises(ToughenUsageError, match="n_queries"):
        square(robust_model, x, y, eps=0.1, n_queries=0)
    with pytest.raises(ToughenUsageError, match="image batches"):
        square(robust_model, x.flatten(1), y, eps=0.1)
    with pytest.raises(ToughenUsageError, match="APGD loss"):
        apgd(robust_model, x, y, eps=0.1, loss="hinge")
