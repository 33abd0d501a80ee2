"""FAB: the contract (ball, bounds, honest "fooled"), and its minimal norms on linear models, where
the distance to the decision boundary is known in closed form."""

import math

import pytest
import torch
from torch import nn

from toughen.attacks import Attack, fab
from toughen.attacks.fab import fab_minimal, project_onto_hyperplane
from toughen.errors import ToughenUsageError


def _norm(t, norm):
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _linear(d=20, k=5, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(d, k)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def _exact_radius(lin, x, y, norm):
    """The distance from x to the nearest other class's region of a linear model, box ignored:
    min_j (z_y - z_j) / ||w_y - w_j||_q, q the dual norm (L2 for L2, L1 for L-inf)."""
    w, b = lin.weight.detach(), lin.bias.detach()
    z = x.flatten(1) @ w.T + b
    diff = w[y][:, None, :] - w[None]
    den = diff.norm(dim=2) if norm == "l2" else diff.abs().sum(2)
    gap = (z.gather(1, y[:, None]) - z) / den
    return gap.masked_fill(torch.arange(w.shape[0])[None] == y[:, None], math.inf).amin(1)


def _inside_the_box_points(model, n=48, d=20):
    # Near the middle of [0, 1], close enough to the boundaries that the box does not bind.
    x = 0.45 + 0.1 * torch.rand(n, 1, d, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("targeted", [False, True])
def test_minimal_norm_matches_the_exact_distance_on_a_linear_model(norm, targeted):
    model, lin = _linear()
    x, y = _inside_the_box_points(model)
    exact = _exact_radius(lin, x, y, norm)
    # Every coordinate of the closest step moves by at most its norm, less than the 0.45 to the box.
    assert (exact < 0.4).all()
    x_adv, radius = fab_minimal(model, x, y, norm=norm, steps=50, targeted=targeted, n_target_classes=4)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()
    torch.testing.assert_close(radius, _norm(x_adv - x, norm))
    assert (radius >= exact * (1 - 1e-4)).all(), "closer than the exact boundary: not adversarial"
    assert (radius <= exact * 1.03).all(), f"worst ratio {(radius / exact).max():.4f}"


def test_targeted_run_finds_the_targets_boundary():
    """With one target class, FAB-T's radius is the distance to that class's boundary."""
    model, lin = _linear(d=10, k=2, seed=3)  # binary: the one other class is the target
    x, y = _inside_the_box_points(model, d=10)
    exact = _exact_radius(lin, x, y, "l2")
    _, radius = fab_minimal(model, x, y, norm="l2", steps=30, targeted=True, n_target_classes=1)
    assert (radius / exact - 1).abs().max() < 0.03


def _closest_sampled(t, w, c, norm, samples=20000, seed=0):
    """Brute force for one row: random points of the box moved onto the hyperplane <w, z - t> = c
    along their coordinate of largest |w|; the norm of the closest that stays in the box (inf if
    none does)."""
    z = torch.rand(samples, len(t), generator=torch.Generator().manual_seed(seed))
    j = int(w.abs().argmax())
    rest = (w * (z - t)).sum(1) - w[j] * (z[:, j] - t[j])
    z[:, j] = t[j] + (c - rest) / w[j]
    inside = ((z >= 0) & (z <= 1)).all(1)
    return _norm(z[inside] - t, norm).min() if inside.any() else torch.tensor(math.inf)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_the_smallest_step_onto_the_hyperplane_in_the_box(norm):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(100, 4, generator=g)
    t[t < 0.2] = 0.0  # coordinates at a bound
    w = torch.randn(100, 4, generator=g)
    c = torch.randn(100, generator=g) * 0.5
    d = project_onto_hyperplane(t, w, c, (0.0, 1.0), norm)
    assert ((t + d) >= -1e-6).all() and ((t + d) <= 1 + 1e-6).all()
    reached = ((w * d).sum(1) - c).abs() < 1e-5
    assert 0.5 < reached.float().mean() < 1  # both cases occur
    for i in range(len(t)):
        sampled = _closest_sampled(t[i], w[i], float(c[i]), norm, seed=i)
        if reached[i]:
            assert _norm(d[i:i + 1], norm)[0] <= sampled + 1e-5, "a sampled point on the hyperplane is closer"
        else:
            assert not torch.isfinite(sampled), "a reachable hyperplane was reported out of reach"
            # out of reach: the box's corner in the direction of c * w
            corner = torch.where(c[i] * w[i] > 0, 1 - t[i], -t[i])
            torch.testing.assert_close(d[i], corner)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
@pytest.mark.parametrize("targeted", [False, True])
def test_fab_stays_in_the_ball_and_only_claims_real_successes(norm, eps, targeted, robust_model, test_batch):
    x, y = test_batch[0][:64], test_batch[1][:64]
    x_adv = fab(robust_model, x, y, eps=eps, norm=norm, steps=20, targeted=targeted, n_target_classes=3)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (_norm(x_adv - x, norm) <= eps + 1e-5).all()
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    with torch.no_grad():
        fooled = robust_model(x_adv).argmax(1) != y
        clean_wrong = robust_model(x).argmax(1) != y
    changed = (x_adv != x).flatten(1).any(1)
    assert fooled[changed].all(), "returned a changed input that does not fool the model"
    assert (fooled & ~clean_wrong).any(), "FAB fooled nothing on a model robust only to eps=0.1"


def test_minimal_radius_agrees_with_fab_at_every_eps(robust_model, test_batch):
    """Examples with a minimal radius within eps are exactly the ones fab fools at eps (one run from
    the clean input, no randomness, so both searches take the same path until they stop)."""
    x, y = test_batch[0][:48], test_batch[1][:48]
    x_min, radius = fab_minimal(robust_model, x, y, norm="linf", steps=20)
    with torch.no_grad():
        assert (robust_model(x_min[torch.isfinite(radius)]).argmax(1) != y[torch.isfinite(radius)]).all()
    eps = float(radius[torch.isfinite(radius) & (radius > 0)].median())
    x_adv = fab(robust_model, x, y, eps=eps, norm="linf", steps=20)
    with torch.no_grad():
        fooled = robust_model(x_adv).argmax(1) != y
    assert torch.equal(fooled, radius <= eps)


def test_restarts_never_lose_what_the_first_run_found(robust_model, test_batch):
    x, y = test_batch[0][:32], test_batch[1][:32]
    _, one = fab_minimal(robust_model, x, y, norm="l2", steps=10)
    _, three = fab_minimal(robust_model, x, y, norm="l2", steps=10, restarts=3,
                           generator=torch.Generator().manual_seed(0))
    assert (three <= one).all()


def test_empty_batch_eps_zero_and_misclassified_inputs(robust_model, test_batch):
    x, y = test_batch
    empty = fab(robust_model, x[:0], y[:0], eps=0.1)
    assert empty.shape == x[:0].shape
    x_e, r_e = fab_minimal(robust_model, x[:0], y[:0])
    assert x_e.shape == x[:0].shape and r_e.shape == (0,)
    assert torch.equal(fab(robust_model, x[:16], y[:16], eps=0.0), x[:16])
    wrong_y = (y[:16] + 1) % 10  # every clean input is misclassified for these labels ...
    with torch.no_grad():
        wrong_y = torch.where(robust_model(x[:16]).argmax(1) == wrong_y, (wrong_y + 1) % 10, wrong_y)
    x_adv, radius = fab_minimal(robust_model, x[:16], wrong_y)
    assert torch.equal(x_adv, x[:16]) and (radius == 0).all()  # ... so x is its own answer


def test_registered_with_the_attack_signature(robust_model, test_batch):
    x, y = test_batch[0][:16], test_batch[1][:16]
    out = Attack("fab", {"steps": 5})(robust_model, x, y, eps=0.1, norm="linf", bounds=(0.0, 1.0),
                                      generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape


def test_float64_and_amp(robust_model, test_batch):
    x, y = test_batch[0][:16], test_batch[1][:16]
    model64 = __import__("copy").deepcopy(robust_model).double()
    assert fab(model64, x.double(), y, eps=0.1, steps=5).dtype == torch.float64
    x_adv = fab(robust_model, x, y, eps=0.1, steps=10, amp="bf16")
    with torch.no_grad():  # fooled in fp32 wherever the input was changed
        changed = (x_adv != x).flatten(1).any(1)
        assert (robust_model(x_adv[changed]).argmax(1) != y[changed]).all()


def test_bad_options_are_refused(robust_model, test_batch):
    x, y = test_batch[0][:4], test_batch[1][:4]
    for bad in ({"steps": 0}, {"restarts": 0}, {"beta": 0.0}, {"alpha_max": 1.5}, {"eta": -1.0},
                {"targeted": True, "n_target_classes": 0}):
        with pytest.raises(ToughenUsageError):
            fab(robust_model, x, y, eps=0.1, **bad)
    with pytest.raises(ToughenUsageError, match="8/255"):
        fab(robust_model, x, y, eps=8)
    with pytest.raises(ToughenUsageError, match="norm"):
        fab_minimal(robust_model, x, y, norm="l1")
