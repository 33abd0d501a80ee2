"""Property tests of the threat models: projection, random start, steps, and the bounds trap."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from toughen import threat
from toughen.errors import ToughenUsageError

norms = st.sampled_from(["linf", "l2"])
eps_values = st.floats(min_value=0.0, max_value=0.9)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _norm(t, norm):
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _x(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 5, 5, generator=g)
    x[:, :, :2] = 0.0  # pixels at the lower bound, as in MNIST
    x[:, :, -1] = 1.0  # and at the upper one
    return x, g


@settings(max_examples=60, deadline=None)
@given(norm=norms, eps=eps_values, seed=seeds, scale=st.floats(0.0, 5.0))
def test_projection_lands_in_ball_and_bounds_and_is_idempotent(norm, eps, seed, scale):
    x, g = _x(seed)
    delta = scale * torch.randn(x.shape, generator=g)
    once = threat.clamp_to_bounds(x, threat.project(delta, eps, norm), (0.0, 1.0))
    assert (_norm(once, norm) <= eps + 1e-5).all()
    assert ((x + once) >= 0).all() and ((x + once) <= 1).all()
    twice = threat.clamp_to_bounds(x, threat.project(once, eps, norm), (0.0, 1.0))
    torch.testing.assert_close(twice, once, atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(norm=norms, eps=eps_values, seed=seeds)
def test_random_start_is_inside_ball_and_bounds(norm, eps, seed):
    x, g = _x(seed)
    delta = threat.random_start(x, eps, norm, (0.0, 1.0), g)
    assert delta.shape == x.shape and delta.dtype == x.dtype
    assert (_norm(delta, norm) <= eps + 1e-5).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


@settings(max_examples=40, deadline=None)
@given(norm=norms, eps=st.floats(0.01, 0.9), seed=seeds, step_size=st.floats(0.001, 1.0))
def test_step_stays_in_ball_and_bounds(norm, eps, seed, step_size):
    x, g = _x(seed)
    delta = threat.random_start(x, eps, norm, (0.0, 1.0), g)
    grad = torch.randn(x.shape, generator=g)
    new = threat.step(x, delta, grad, step_size, eps, norm, (0.0, 1.0))
    assert (_norm(new, norm) <= eps + 1e-5).all()
    assert ((x + new) >= 0).all() and ((x + new) <= 1).all()


def test_l2_step_has_the_step_length_when_unconstrained():
    x = torch.full((2, 1, 4, 4), 0.5)
    grad = torch.randn(2, 1, 4, 4)
    new = threat.step(x, torch.zeros_like(x), grad, 0.1, 0.4, "l2", (0.0, 1.0))
    torch.testing.assert_close(new.flatten(1).norm(dim=1), torch.full((2,), 0.1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_pixel_at_a_bound_can_move_back_inside(norm):
    """The trap: if the stored delta could leave the box, a pixel at 0 pushed down once would
    stay stuck at 0 even when the gradient later pushes it up."""
    x = torch.zeros(1, 1, 1, 1)
    down, up = -torch.ones_like(x), torch.ones_like(x)
    delta = threat.step(x, torch.zeros_like(x), down, 0.1, 0.3, norm, (0.0, 1.0))
    assert (x + delta).item() == 0.0  # clamped at the bound, and delta itself is 0, not -0.1
    assert delta.item() == 0.0
    delta = threat.step(x, delta, up, 0.1, 0.3, norm, (0.0, 1.0))
    assert math.isclose((x + delta).item(), 0.1, rel_tol=1e-6)


@pytest.mark.parametrize("eps,hint", [(8, "8/255"), (1.0, "1/255"), (255, "255/255")])
def test_eps_in_0_255_units_is_refused_with_a_hint(eps, hint):
    with pytest.raises(ToughenUsageError, match=hint):
        threat.check_eps(eps, "linf")


def test_negative_eps_and_unknown_norm_are_refused():
    with pytest.raises(ToughenUsageError, match=">= 0"):
        threat.check_eps(-0.1)
    with pytest.raises(ToughenUsageError, match="linf, l2"):
        threat.check_eps(0.1, "l3")
    assert threat.check_eps(2.0, "l2", dim=784) == 2.0  # L2 radii above 1 are normal
