"""isometry.theory: closed forms vs quadrature, Fuss–Catalan, Bernoulli and the S-transform.

Tolerances: mean-field check values (docs/theory.md §1) to 1e-5 relative; closed forms against the
kink-split quadrature to 1e-9; the S-transform density against the Fuss–Catalan parametric
density to 1e-8; moments integrated from the continued density to 1e-4 (Simpson on the grid,
a slowly decaying lower tail cut 24 decades below the edge).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from isometry import theory

relu_fn = lambda h: jnp.maximum(h, 0.0)  # noqa: E731  (generic path: a JAX function + kinks)
hardtanh_fn = lambda h: jnp.clip(h, -1.0, 1.0)  # noqa: E731


# --- mean field -------------------------------------------------------------------------------


@pytest.mark.parametrize("sw2,sb2,q_ref,chi_ref", [(1.5, 0.0, 0.286894, 1.040568),
                                                   (1.0, 0.05, 0.193593, 0.759032)])
def test_tanh_check_values(sw2, sb2, q_ref, chi_ref):
    q = theory.q_star("tanh", sw2, sb2)
    assert q == pytest.approx(q_ref, rel=1e-5)
    assert theory.chi_1("tanh", sw2, sb2) == pytest.approx(chi_ref, rel=1e-5)
    assert theory.q_map("tanh", q, sw2, sb2) == pytest.approx(q, rel=1e-12)


def test_tanh_critical_line():
    sw2 = theory.critical_sigma_w2("tanh", 0.05)
    assert sw2 == pytest.approx(1.760955, rel=1e-5)
    assert theory.chi_1("tanh", sw2, 0.05) == pytest.approx(1.0, abs=1e-10)
    assert theory.critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("q", [0.05, 0.7, 3.0])
def test_closed_forms_match_quadrature(q):
    sw2, sb2 = 1.7, 0.2
    for name, fn, kinks in [("relu", relu_fn, (0.0,)), ("hardtanh", hardtanh_fn, (-1.0, 1.0)),
                            ("linear", lambda h: h, ())]:
        assert theory.q_map(fn, q, sw2, sb2, kinks=kinks) == pytest.approx(
            theory.q_map(name, q, sw2, sb2), rel=1e-10)
        np.testing.assert_allclose(theory.phi_prime_moments(fn, q, 3, kinks=kinks),
                                   theory.phi_prime_moments(name, q, 3), rtol=1e-10)
    for c in (-0.6, 0.0, 0.3, 0.95):
        assert theory.c_map(relu_fn, c, sw2, sb2, q=q, kinks=(0.0,)) == pytest.approx(
            theory.c_map("relu", c, sw2, sb2, q=q), rel=1e-9)


def test_kinks_matter():
    """Without its kink declared, ReLU's μ₁ = 1/2 is only approximate (the reason for kinks=)."""
    exact = theory.phi_prime_moments(relu_fn, 1.0, 1, kinks=(0.0,))[0]
    assert exact == pytest.approx(0.5, rel=1e-13)


def test_fixed_points_closed_forms_and_errors():
    assert theory.q_star("linear", 0.5, 0.1) == pytest.approx(0.2)
    assert theory.q_star("relu", 1.5, 0.1) == pytest.approx(0.1 / (1 - 0.75))
    assert theory.q_star("relu", 2.0, 0.0, q0=3.0) == 3.0  # every q is a fixed point
    assert theory.chi_1("relu", 2.0, 0.0) == 1.0
    assert theory.q_star("tanh", 0.8, 0.0) == 0.0  # ordered phase, odd φ
    q = theory.q_star("hardtanh", 2.5, 0.3)
    assert theory.q_map("hardtanh", q, 2.5, 0.3) == pytest.approx(q, rel=1e-12)
    with pytest.raises(ValueError, match="no finite fixed point"):
        theory.q_star("relu", 2.5, 0.0)
    with pytest.raises(ValueError, match="no critical point"):
        theory.critical_sigma_w2("relu", 0.1)
    with pytest.raises(ValueError, match="unknown activation"):
        theory.q_star("swish", 1.0)
    with pytest.raises(ValueError, match="sigma_w2"):
        theory.q_star("tanh", -1.0)


def test_depth_scales():
    xi_c, xi_q = theory.depth_scales("relu", 1.5, 0.1)
    assert xi_c == pytest.approx(-1 / math.log(0.75))
    assert xi_q == pytest.approx(-1 / math.log(0.75))
    assert theory.depth_scales("relu", 2.0, 0.0)[0] == math.inf  # critical
    # ξ_q: the slope of the q-map at q*, against a central difference
    sw2, sb2 = 1.2, 0.05
    q = theory.q_star("tanh", sw2, sb2)
    h = 1e-5 * q
    slope = (theory.q_map("tanh", q + h, sw2, sb2) - theory.q_map("tanh", q - h, sw2, sb2)) / (2 * h)
    assert theory.depth_scales("tanh", sw2, sb2)[1] == pytest.approx(-1 / math.log(slope), rel=1e-6)
    mf = theory.mean_field("tanh", 1.5, 0.0)
    assert mf.c_star == pytest.approx(0.0, abs=1e-12)  # chaotic, odd φ, σ_b = 0
    assert theory.c_map("tanh", 0.0, 1.5, 0.0) == pytest.approx(0.0, abs=1e-12)


# --- Fuss–Catalan -----------------------------------------------------------------------------


def _fc_integral(depth, g):
    """∫ g(λ) ρ(λ) dλ through the parametric form, dλ/dφ derived independently here."""
    L = depth

    def integrand(phi):
        lam, rho = theory.fuss_catalan_density(L, phi)
        dlog = (L + 1) ** 2 / np.tan((L + 1) * phi) - 1 / np.tan(phi) - L ** 2 / np.tan(L * phi)
        return g(lam) * rho * abs(lam * dlog)

    return integrate.quad(integrand, 1e-12, math.pi / (L + 1) - 1e-12, limit=400)[0]


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_fuss_catalan_density_integrates(depth):
    assert _fc_integral(depth, lambda lam: 1.0) == pytest.approx(1.0, rel=1e-6)
    for k, m in enumerate(theory.fuss_catalan_moments(depth, 3), start=1):
        assert _fc_integral(depth, lambda lam: lam ** k) == pytest.approx(m, rel=1e-6)
    assert _fc_integral(depth, np.sqrt) == pytest.approx(theory.fuss_catalan_mean_sigma(depth), rel=1e-6)
    assert theory.fuss_catalan_mean_sigma(1) == pytest.approx(8 / (3 * math.pi))
    lam_top, _ = theory.fuss_catalan_density(depth, np.array([1e-9]))
    assert lam_top[0] == pytest.approx(theory.fuss_catalan_edge(depth), rel=1e-9)


@pytest.mark.parametrize("depth", [1, 3])
def test_s_transform_reproduces_fuss_catalan(depth):
    law = theory.d2_law("linear", 1.0)
    phi = np.linspace(0.02, 0.98, 9) * math.pi / (depth + 1)
    lam, rho = theory.fuss_catalan_density(depth, phi)
    d = theory.jacobian_density(law, depth, 1.0, log10_sigma=0.5 * np.log10(lam))
    np.testing.assert_allclose(d.density_lambda()[1], rho, rtol=1e-8)
    np.testing.assert_allclose(theory.jacobian_moments(law, depth, 1.0, k=5),
                               theory.fuss_catalan_moments(depth, 5), rtol=1e-12)
    full = theory.jacobian_density(law, depth, 1.0, nodes=1500)
    assert full.edge == pytest.approx(theory.fuss_catalan_edge(depth), rel=1e-10)
    assert full.mean_sigma == pytest.approx(theory.fuss_catalan_mean_sigma(depth), rel=1e-8)
    assert full.mass == pytest.approx(1.0, abs=1e-6)


def test_sigma_w_scaling():
    """σ_w² only rescales λ by σ_w^{2L}."""
    law = theory.d2_law("linear", 1.0)
    np.testing.assert_allclose(theory.jacobian_moments(law, 3, 1.3, k=3),
                               theory.fuss_catalan_moments(3, 3, sigma_w2=1.3), rtol=1e-12)
    d = theory.jacobian_density(law, 3, 1.3, nodes=800)
    assert d.edge == pytest.approx(theory.fuss_catalan_edge(3, 1.3), rel=1e-10)
    assert d.mean_sigma == pytest.approx(theory.fuss_catalan_mean_sigma(3, 1.3), rel=1e-7)


# --- Bernoulli D and general activations -----------------------------------------------------


def _density_moment(d, k):
    """∫ λ^k ρ over the continuous part plus the point masses (zero atom contributes 0)."""
    lam, rho = d.density_lambda()
    cont = integrate.simpson(lam ** k * rho * 2 * math.log(10) * lam, x=d.log10_sigma)
    return cont + float(np.sum(d.point_mass * d.point_sigma ** (2 * k)))


@pytest.mark.parametrize("activation,sb2", [("relu", 0.0), ("hardtanh", 0.05)])
def test_bernoulli_closed_form_moments(activation, sb2):
    depth = 3
    sw2 = theory.critical_sigma_w2(activation, sb2)
    q = theory.q_star(activation, sw2, sb2)
    law = theory.d2_law(activation, q)
    p = 1 - law.zero_mass
    closed = theory.bernoulli_moments(depth, p, 4)
    np.testing.assert_allclose(theory.jacobian_moments(law, depth, sw2, k=4), closed, rtol=1e-12)
    d = theory.jacobian_density(law, depth, sw2, nodes=1500)
    assert d.mass == pytest.approx(p, abs=1e-4)
    for k in (1, 2, 3):
        assert _density_moment(d, k) == pytest.approx(closed[k - 1], rel=1e-4)


@pytest.mark.parametrize("weights,v", [("gaussian", 1.0), ("orthogonal", 0.0)])
def test_tanh_density_and_nvar_additivity(weights, v):
    """nvar = L (μ₂/μ₁² − 1 + v_W); the continued density has the series' moments."""
    depth, sw2, sb2 = 4, 1.2, 0.05
    pred = theory.predict_spectrum("tanh", depth, sw2, sb2, weights, nodes=1500)
    mu = theory.phi_prime_moments("tanh", pred.q_star, 2)
    assert pred.nvar == pytest.approx(depth * (mu[1] / mu[0] ** 2 - 1 + v), rel=1e-10)
    assert pred.moments[0] == pytest.approx(pred.chi_1 ** depth, rel=1e-12)
    assert pred.density.mass == pytest.approx(1.0, abs=1e-5)
    for k in (1, 2, 3):
        assert _density_moment(pred.density, k) == pytest.approx(pred.moments[k - 1], rel=1e-4)


def test_relu_prediction_at_criticality():
    for weights, nvar in (("gaussian", 2 * 4), ("orthogonal", 4)):
        pred = theory.predict_spectrum("relu", 4, 2.0, weights=weights, nodes=1000)
        assert pred.moments[0] == pytest.approx(1.0)
        assert pred.nvar == pytest.approx(nvar)
        assert pred.density.zero_mass == 0.5
        assert set(pred.to_dict()) >= {"q_star", "chi_1", "m1", "m2", "m3", "nvar", "edge",
                                       "mean_sigma"}


def test_orthogonal_bernoulli_top_atom():
    """Orthogonal hard-tanh at L(1−p) < 1: an atom at σ_w^L of mass 1 − L(1−p)."""
    sw2 = theory.critical_sigma_w2("hardtanh", 0.05)
    q = theory.q_star("hardtanh", sw2, 0.05)
    law = theory.d2_law("hardtanh", q)
    d = theory.jacobian_density(law, 2, sw2, "orthogonal", nodes=1500)
    np.testing.assert_allclose(d.point_sigma, [sw2], rtol=1e-12)
    np.testing.assert_allclose(d.point_mass, [1 - 2 * law.zero_mass], rtol=1e-12)
    assert d.mass + d.point_mass.sum() + d.zero_mass == pytest.approx(1.0, abs=1e-5)
    assert _density_moment(d, 1) == pytest.approx(1.0, rel=1e-4)


def test_orthogonal_linear_is_a_point_mass():
    pred = theory.predict_spectrum("linear", 5, 1.3, weights="orthogonal")
    np.testing.assert_allclose(pred.density.point_sigma, [1.3 ** 2.5], rtol=1e-12)
    assert pred.nvar == pytest.approx(0.0, abs=1e-12)
    assert pred.mean_sigma == pytest.approx(1.3 ** 2.5)


def test_measured_statistics_on_known_values():
    s = np.array([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    stats = theory.spectrum_moments(s)
    np.testing.assert_allclose(stats["m1"], [5 / 3, 1.0])
    np.testing.assert_allclose(stats["nvar"], [(17 / 3) / (5 / 3) ** 2 - 1, 0.0])
    np.testing.assert_allclose(stats["zero_fraction"], [1 / 3, 0.0])
    mean, se = theory.mean_and_sem(np.array([1.0, 3.0]))
    assert (mean, se) == (2.0, 1.0)


def test_bad_spectral_arguments():
    law = theory.d2_law("relu", 1.0)
    with pytest.raises(ValueError, match="weights"):
        theory.jacobian_moments(law, 3, 2.0, "uniform")
    with pytest.raises(ValueError, match="depth"):
        theory.jacobian_moments(law, 0, 2.0)


# --- closed forms belong to the activation object, never to its name -------------------------


def test_closed_forms_follow_the_object_not_the_name():
    """A leaky ReLU whose Python function is named `relu` used to get ReLU's closed forms
    (χ₁ = σ_w²/2); it is a plain function, so quadrature gives its own χ₁ = σ_w² (1 + a²)/2."""

    def relu(h):  # a leaky ReLU, slope 1/2 below 0, with a misleading name
        return jnp.where(h > 0, h, 0.5 * h)

    def leaky(h):
        return jnp.where(h > 0, h, 0.5 * h)

    for fn in (relu, leaky):
        assert theory.resolve_activation(fn, kinks=(0.0,)).closed_forms is None
        assert theory.chi_1(fn, 1.0, kinks=(0.0,)) == pytest.approx(0.625, rel=1e-12)
        assert theory.phi_prime_moments(fn, 1.0, 1, kinks=(0.0,))[0] == pytest.approx(0.625)
        with pytest.raises(ValueError, match="no finite fixed point"):
            theory.chi_1(fn, 2.0, kinks=(0.0,))  # q grows: q′ = 1.25 q
    # and closed forms travel with an Activation under any name
    forms = theory.ACTIVATIONS["relu"].closed_forms
    renamed = theory.Activation("my_relu", jax.nn.relu, (0.0,), forms)
    assert theory.chi_1(renamed, 2.0) == 1.0
    assert theory.q_star(renamed, 1.5, 0.1) == pytest.approx(0.1 / (1 - 0.75))
    # a leaky ReLU given its own closed forms: χ₁ = σ_w² (1 + a²)/2 = 1.25 at σ_w² = 2
    leaky_forms = theory.ClosedForms(
        second_moment=lambda q: 0.625 * q, second_moment_slope=lambda q: 0.625,
        d2_atoms=lambda q: (np.array([0.25, 1.0]), np.array([0.5, 0.5])), homogeneous=True)
    leaky_act = theory.Activation("relu", relu, (0.0,), leaky_forms)
    assert theory.chi_1(leaky_act, 2.0) == pytest.approx(1.25, rel=1e-15)
    assert theory.q_map(leaky_act, 2.0, 1.0) == pytest.approx(
        theory.q_map(relu, 2.0, 1.0, kinks=(0.0,)), rel=1e-12)  # closed form = quadrature


def test_one_activation_table():
    import models

    assert set(models.ACTIVATIONS) == set(theory.ACTIVATIONS)
    for name, act in theory.ACTIVATIONS.items():
        assert models.ACTIVATIONS[name] is act.fn
    h = jnp.linspace(-3.0, 3.0, 13)
    np.testing.assert_array_equal(theory.ACTIVATIONS["hardtanh"].fn(h), jnp.clip(h, -1.0, 1.0))
    np.testing.assert_array_equal(theory.ACTIVATIONS["linear"].fn(h), h)
