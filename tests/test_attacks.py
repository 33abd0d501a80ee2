"""Contract tests over every registered attack, and PGD checked against a hand-written loop."""

import pytest
import torch
import torch.nn.functional as F

from toughen.attacks import Attack, fgsm, list_attacks, pgd
from toughen.errors import ToughenUsageError

CASES = [("linf", 0.1), ("l2", 1.0)]
# Smaller budgets than the defaults, to keep the contract test fast; the attacks' own tests use more.
CONTRACT_OPTIONS = {"apgd": {"steps": 20}, "fab": {"steps": 20}, "square": {"n_queries": 150}}


def _norm(t, norm):
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@pytest.mark.parametrize("name", list_attacks())
@pytest.mark.parametrize("norm,eps", CASES)
def test_attack_contract(name, norm, eps, robust_model, test_batch):
    x, y = test_batch
    model = robust_model
    model.eval()
    attack = Attack(name, CONTRACT_OPTIONS.get(name, {}))
    grads_before = [p.grad for p in model.parameters()]
    x_adv = attack(model, x, y, eps=eps, norm=norm, bounds=(0.0, 1.0), generator=torch.Generator().manual_seed(1))

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert (_norm(x_adv - x, norm) <= eps + 1e-5).all(), "left the eps-ball"
    assert (x_adv >= 0).all() and (x_adv <= 1).all(), "left the data bounds"
    assert not model.training, "the attack changed the model's mode"
    assert [p.grad for p in model.parameters()] == grads_before, "gradients were left on the parameters"

    again = attack(model, x, y, eps=eps, norm=norm, bounds=(0.0, 1.0), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, x_adv, rtol=0, atol=0)

    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y, reduction="none")
        adv_loss = F.cross_entropy(model(x_adv), y, reduction="none")
        clean_acc = (model(x).argmax(1) == y).float().mean()
        adv_acc = (model(x_adv).argmax(1) == y).float().mean()
    # Per example the attack keeps the worst point it saw, the clean one included for FGSM.
    assert (adv_loss >= clean_loss - 1e-4).float().mean() >= 0.95
    assert adv_loss.mean() > clean_loss.mean()
    assert adv_acc < clean_acc


@pytest.mark.parametrize("name", list_attacks())
def test_attack_keeps_train_mode(name, robust_model, test_batch):
    x, y = test_batch
    robust_model.train()
    try:
        Attack(name, CONTRACT_OPTIONS.get(name, {}))(robust_model, x[:8], y[:8], eps=0.1, norm="linf",
                                                      bounds=(0.0, 1.0), generator=None)
        assert robust_model.training
    finally:
        robust_model.eval()


def _hand_pgd(model, x, y, eps, alpha, steps, delta0):
    """Madry's loop written the obvious (and correct) way: keep x + delta inside [0, 1]."""
    delta = delta0.clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return x + delta


def test_pgd_last_iterate_matches_a_hand_loop(robust_model, test_batch):
    x, y = test_batch
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ours = pgd(robust_model, x, y, eps=0.1, steps=7, step_size=0.03, keep_best=False, generator=g1)
    delta0 = ((2 * torch.rand(x.shape, generator=g2) - 1) * 0.1)
    delta0 = (x + delta0).clamp(0, 1) - x
    ref = _hand_pgd(robust_model, x, y, 0.1, 0.03, 7, delta0)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_pgd_is_at_least_as_strong_as_the_hand_loop_on_a_robust_model(robust_model, test_batch):
    """From the hand loop's own start, keep_best fools every example the hand loop's last iterate
    fools: the last iterate is one of its candidates, and a fooling candidate beats any other.
    (Against a different random start the comparison would be noise of a few examples, which
    another CPU's rounding of the fixture's training tips either way.)"""
    x, y = test_batch
    ref = _hand_pgd(robust_model, x, y, 0.1, 0.025, 20, torch.zeros_like(x))
    ours = pgd(robust_model, x, y, eps=0.1, steps=20, step_size=0.025, random_start=False)
    with torch.no_grad():
        clean = robust_model(x).argmax(1) == y
        ref_robust = robust_model(ref).argmax(1) == y
        our_robust = robust_model(ours).argmax(1) == y
    assert not (our_robust & ~ref_robust).any(), "an example the hand loop fooled is robust to ours"
    assert 0.3 < our_robust.float().mean() < clean.float().mean(), "the fixture should be robust, but not perfectly"


def test_restarts_keep_the_worst_case_per_example(robust_model, test_batch):
    x, y = test_batch
    one = pgd(robust_model, x, y, eps=0.1, steps=5, restarts=1, generator=torch.Generator().manual_seed(3))
    many = pgd(robust_model, x, y, eps=0.1, steps=5, restarts=4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fooled_one = robust_model(one).argmax(1) != y
        fooled_many = robust_model(many).argmax(1) != y
    # Restart 1 of `many` is the very run `one`: anything it fooled stays fooled.
    assert (fooled_many | ~fooled_one).all()
    assert fooled_many.sum() >= fooled_one.sum()


def test_targeted_pgd_reaches_the_target(standard_model, test_batch):
    x, y = test_batch
    target = (y + 1) % 10
    x_adv = pgd(standard_model, x, y, eps=0.3, steps=30, target=target, generator=torch.Generator().manual_seed(0))
    x_untargeted = pgd(standard_model, x, y, eps=0.3, steps=30, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hit = (standard_model(x_adv).argmax(1) == target).float().mean().item()
        by_chance = (standard_model(x_untargeted).argmax(1) == target).float().mean().item()
    # Some targets lie outside the eps-ball on 8x8 digits; most do not.
    assert hit > 0.8
    assert hit > 3 * by_chance


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_breaks_an_undefended_model(loss, standard_model, test_batch):
    x, y = test_batch
    x_adv = pgd(standard_model, x, y, eps=0.3, steps=20, loss=loss, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (standard_model(x).argmax(1) == y).float().mean() > 0.9
        assert (standard_model(x_adv).argmax(1) == y).float().mean() < 0.02


def test_fgsm_is_weaker_than_pgd_on_a_robust_model(robust_model, test_batch):
    x, y = test_batch
    with torch.no_grad():
        acc = lambda xa: (robust_model(xa).argmax(1) == y).float().mean().item()  # noqa: E731
        assert acc(fgsm(robust_model, x, y, eps=0.1)) > acc(pgd(robust_model, x, y, eps=0.1, steps=20))


def test_attack_follows_float64_inputs(robust_model, test_batch):
    x, y = test_batch
    model64 = __import__("copy").deepcopy(robust_model).double()
    x_adv = pgd(model64, x.double()[:16], y[:16], eps=0.1, steps=3)
    assert x_adv.dtype == torch.float64


def test_bad_arguments_are_refused(robust_model, test_batch):
    x, y = test_batch
    with pytest.raises(ToughenUsageError, match="8/255"):
        pgd(robust_model, x, y, eps=8)
    with pytest.raises(ToughenUsageError, match="steps"):
        pgd(robust_model, x, y, eps=0.1, steps=-1)
    with pytest.raises(ToughenUsageError, match="one label per input"):
        pgd(robust_model, x, y[:3], eps=0.1)
    with pytest.raises(ToughenUsageError, match="choose one of"):
        Attack("nope")
