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



class _NearTie(torch.nn.Module):
    """Two logits 0.001 apart around 300: bf16 (spacing 2 there) rounds them to a tie, which
    argmax breaks towards class 0; in fp32 class 1 wins."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.lin.weight.fill_(1.0)
            self.lin.bias.copy_(torch.tensor([0.0, 0.001]))

    def forward(self, x):
        return self.lin(x.flatten(1).sum(1, keepdim=True) * 300)


def test_confirm_fooled_decides_in_full_precision_inside_autocast():
    from toughen.precision import confirm_fooled

    model, x, y = _NearTie(), torch.ones(4, 1), torch.ones(4, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x).argmax(1) != y
        assert low.all()  # the premise: bf16 calls every example fooled
        confirmed = confirm_fooled(model, x, y, None, low)
    assert not confirmed.any()  # fp32 says none is
    # and a real misclassification is kept: label 0 is wrong in fp32
    y0 = torch.zeros(4, dtype=torch.long)
    assert confirm_fooled(model, x, y0, None, torch.tensor([True, False, True, False])).tolist() == [
        True, False, True, False]


def test_bf16_suite_matches_fp32_and_checks_fooled_in_fp32(robust_model, test_batch):
    """The standard attacks (APGD-CE, APGD-T, Square) with amp: inside the threat model, and the
    worst case within a few examples of the fp32 suite on a robust model."""
    import toughen
    from toughen.attacks import Attack, apgd, square

    x, y = test_batch
    x, y = x[:64], y[:64]
    for attack in (apgd, square):
        opts = {"n_queries": 100} if attack is square else {"steps": 10}
        x_adv = attack(robust_model, x, y, eps=0.3, amp="bf16", generator=torch.Generator().manual_seed(0), **opts)
        assert x_adv.dtype == torch.float32
        assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    suite = [Attack("apgd", {"steps": 20}), Attack("apgd", {"steps": 20, "loss": "dlr", "n_target_classes": 3}),
             Attack("square", {"n_queries": 200})]
    res = {amp: toughen.evaluate(robust_model, x, y, suite=suite, eps=0.3, amp=amp) for amp in (None, "bf16")}
    assert res["bf16"]["amp"] == "bf16" and res[None]["amp"] is None
    assert res[None]["robust_accuracy"] < res[None]["clean_accuracy"]  # the attacks do something
    assert abs(res["bf16"]["robust_accuracy"] - res[None]["robust_accuracy"]) <= 3 / 64, res
