"""Tests of isometry.toy against docs/theory.md §4 (float64, conftest enables x64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isometry import toy

#: docs/theory.md §4: on the zero-loss curve (1 + αw)^5 = 50, so αw = 50^{1/5} − 1.
SOLUTION_PRODUCT = 50.0 ** (1 / 5) - 1
EPS = float(jnp.finfo(jnp.float64).eps)


@pytest.fixture(scope="module")
def problem():
    return toy.toy_problem()


def _points(n=64, seed=0):
    kw, ka = jax.random.split(jax.random.key(seed))
    return (jax.random.uniform(kw, (n,), minval=-2.0, maxval=2.0),
            jax.random.uniform(ka, (n,), minval=-1.5, maxval=1.5))


def test_figure2_setup_and_zero_loss_curve(problem):
    assert problem.depth == 5 and problem.inputs.shape == (9,)
    assert problem.inputs.dtype == jnp.float64
    np.testing.assert_allclose(problem.second_moment, 18.24 / 9, rtol=4 * EPS)
    np.testing.assert_allclose(problem.solution_product, SOLUTION_PRODUCT, rtol=4 * EPS)
    # On the hyperbola αw = T^{1/L} − 1 the loss vanishes to rounding (the loss is a square of
    # u^L − T, which rounds at the scale T·eps), and it is far from zero off the curve.
    w = jnp.array([-2.0, -0.7, 0.4, 1.3, 3.0])
    on_curve = toy.loss(problem, w, SOLUTION_PRODUCT / w)
    scale = float(problem.second_moment) * (50.0 * 64 * EPS) ** 2
    assert jnp.all(on_curve <= scale)
    off_curve = toy.loss(problem, w, 1.1 * SOLUTION_PRODUCT / w)
    assert jnp.all(off_curve > 1.0)


def test_loss_matches_its_stated_normalization(problem):
    w, alpha = _points()
    x = np.asarray(problem.inputs)
    u = 1.0 + np.asarray(alpha) * np.asarray(w)
    expected = np.mean(((u[:, None] ** 5) * x - 50.0 * x) ** 2, axis=-1)  # (1/n) Σ, no ½
    np.testing.assert_allclose(toy.loss(problem, w, alpha), expected, rtol=1e-13)
    np.testing.assert_allclose(toy.output_gain(problem, w, alpha), u ** 5, rtol=1e-14)


def test_gradient_in_w_vanishes_at_alpha_zero(problem):
    w = jnp.array([-1.5, -0.3, 0.2, 1.0, 2.5])
    gw, ga = toy.gradient(problem, w, jnp.zeros_like(w))
    assert jnp.all(gw == 0.0)
    gw_ad, ga_ad = toy.autodiff_gradient(problem, w, jnp.zeros_like(w))
    assert jnp.all(gw_ad == 0.0)
    # ∂C/∂α = w G with G = 2⟨x²⟩ L (1 − T) at α = 0: α moves first, in proportion to w.
    g0 = 2 * (18.24 / 9) * 5 * (1 - 50.0)
    np.testing.assert_allclose(ga, w * g0, rtol=1e-13)
    np.testing.assert_allclose(ga_ad, w * g0, rtol=1e-12)


@pytest.mark.parametrize("depth,target", [(5, 50.0), (3, 8.0), (12, 2.0)])
def test_closed_form_gradient_equals_autodiff(depth, target):
    problem = toy.toy_problem(depth, target, (0.5, -1.2, 2.0))
    w, alpha = _points(seed=depth)
    closed = jnp.stack(toy.gradient(problem, w, alpha))
    auto = jnp.stack(toy.autodiff_gradient(problem, w, alpha))
    # Both sum the same O(L) float64 terms: agreement to a few hundred ulps of the largest term.
    scale = jnp.max(jnp.abs(closed), axis=0, keepdims=True)
    assert jnp.all(jnp.abs(closed - auto) <= 256 * depth * EPS * scale)
    assert jnp.all(jnp.abs(closed) > 0)  # not a test on zeros


def test_gradient_grid_orientation_and_no_recompile(problem):
    w = jnp.linspace(-2.0, 2.0, 7)
    alpha = jnp.linspace(-1.1, 1.3, 5)  # not square, so a transposed grid would fail
    grid = toy.gradient_grid(problem, w, alpha)
    assert grid.log_grad_norm.shape == (5, 7)
    gw, ga = toy.autodiff_gradient(problem, w[None, :], alpha[:, None])
    np.testing.assert_allclose(grid.log_grad_norm, jnp.log(gw ** 2 + ga ** 2), rtol=1e-12)
    size = toy.compiled_gradient_grid._cache_size()
    toy.gradient_grid(problem, w + 0.1, alpha - 0.2)
    assert toy.compiled_gradient_grid._cache_size() == size


def test_rezero_descent_from_alpha_zero_reaches_the_curve(problem):
    tol = 1e-8
    starts = (-1.5, 0.5, 1.75)
    for w0 in starts:
        t = toy.descend(problem, w0, 0.0, 5e-6, max_steps=2000, tol=tol)
        steps = int(t.steps)
        assert bool(t.converged) and not bool(t.diverged) and 0 < steps < 2000
        assert t.w[1] == t.w[0] == w0  # the first step moves α only (∂C/∂w = 0 at α = 0)
        assert t.alpha[1] != 0.0
        # loss ≤ tol ⇒ |u^L − T| ≤ √(tol/⟨x²⟩) ⇒ |Δ(αw)| ≤ √(tol/⟨x²⟩) / (L u^{L−1}).
        bound = math.sqrt(tol / float(problem.second_moment)) / (5 * 50.0 ** 0.8)
        assert abs(float(t.final_product) - SOLUTION_PRODUCT) <= bound
        # the path is consistent: losses recomputed from it, padded with the final point.
        np.testing.assert_allclose(t.loss[: steps + 1],
                                   toy.loss(problem, t.w[: steps + 1], t.alpha[: steps + 1]),
                                   rtol=1e-12, atol=1e-12 * float(t.loss[0]))
        assert jnp.all(t.w[steps:] == t.final_w) and t.final_loss <= tol < t.loss[steps - 1]


def test_record_false_gives_the_same_run(problem):
    full = toy.descend(problem, 1.0, 0.0, 5e-6, max_steps=500)
    ends = toy.descend(problem, 1.0, 0.0, 5e-6, max_steps=500, record=False)
    assert ends.w.shape == (2,) and int(ends.steps) == int(full.steps)
    assert ends.final_w == full.final_w and ends.final_alpha == full.final_alpha


def test_descend_compiles_once_for_every_depth():
    first = toy.descend(toy.toy_problem(3, 8.0), 0.5, 0.0, 1e-3, max_steps=300, record=False)
    size = toy.descend._cache_size()
    second = toy.descend(toy.toy_problem(7, 8.0), 0.5, 0.0, 1e-4, max_steps=300, record=False)
    assert toy.descend._cache_size() == size
    assert bool(first.converged) and bool(second.converged)
    np.testing.assert_allclose([first.final_product, second.final_product],
                               [8.0 ** (1 / 3) - 1, 8.0 ** (1 / 7) - 1], rtol=1e-4)


def test_divergence_is_detected_and_reported(problem):
    t = toy.descend(problem, 1.0, 1.0, 1e-2, train_alpha=False, max_steps=1000, record=False)
    assert bool(t.diverged) and not bool(t.converged)
    assert int(t.steps) < 1000  # stopped when caught, not at the budget
    assert not jnp.any(jnp.isnan(t.w)) and jnp.all(t.alpha == 1.0)


@pytest.mark.parametrize("depth,target", [(5, 50.0), (8, 20.0)])
def test_residual_stability_bound_confirmed_by_simulation(depth, target):
    problem = toy.toy_problem(depth, target)
    bound = float(toy.stability_bound(problem, 1.0))
    w_star = float(problem.solution_product)
    # The bound is 2/C''(w*): check it against the autodiff curvature.
    curvature = jax.grad(jax.grad(lambda w: toy.loss(problem, w, 1.0)))(w_star)
    np.testing.assert_allclose(bound, 2.0 / curvature, rtol=1e-10)
    delta = 1e-4 * w_star
    runs = {f: toy.descend(problem, w_star + delta, 1.0, f * bound, train_alpha=False,
                           max_steps=3000, tol=1e-26)
            for f in (0.98, 1.02)}
    below, above = runs[0.98], runs[1.02]
    # Just below: the error contracts by |1 − λ h| = 0.96 per step, to rounding level.
    assert bool(below.converged) or abs(float(below.final_w) - w_star) < 1e-12 * w_star
    assert not bool(below.diverged)
    # Just above: it grows by 1.04 per step, to an oscillation that never settles.
    assert not bool(above.converged)
    assert float(jnp.min(jnp.abs(above.w[-10:] - w_star))) > 1e2 * delta


def test_rezero_stability_bound_curvature():
    problem = toy.toy_problem()
    alpha = 0.8
    w = float(problem.solution_product) / alpha
    hessian = jax.jit(jax.hessian(lambda p: toy.loss(problem, p[0], p[1])))(jnp.array([w, alpha]))
    top = float(jnp.max(jnp.linalg.eigvalsh(hessian)))
    np.testing.assert_allclose(toy.stability_bound(problem, alpha, train_alpha=True), 2.0 / top,
                               rtol=1e-10)


def test_largest_stable_lr_finds_the_residual_bound_at_small_depth():
    problem = toy.toy_problem(depth=4)
    search = toy.largest_stable_lr(problem, 1.0, 1.0, train_alpha=False, max_steps=20_000,
                                   lr_range=(1e-8, 1e-2), grid_points=13, iterations=20)
    bound = float(toy.stability_bound(problem, 1.0))
    # Near the edge contraction is slow, so a finite budget ends the search a little below it.
    assert 0.99 * bound < float(search.lr) < float(search.lr_fails) <= bound * (1 + 1e-9)
    assert float(search.lr_fails) / float(search.lr) < 1 + 1e-4
    assert 0 < int(search.fastest_steps) < 200 and float(search.fastest_lr) <= float(search.lr)


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=0), "depth"), (dict(depth=2.5), "depth"), (dict(target=-1.0), "target"),
    (dict(target=float("nan")), "target"), (dict(inputs=(0.0, 0.0)), "inputs"),
    (dict(inputs=()), "inputs"),
])
def test_bad_problems_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toy.toy_problem(**kwargs)
