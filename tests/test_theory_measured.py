"""Measured spectra of float64 FC nets (width 256) against the predictions of isometry.theory.

One network scatters (m₁ of one ReLU net has relative sd ≈ √(L/N)), so every check averages
over several seeds and allows K_SE = 4 standard errors of the mean across seeds (a false
failure has probability ~6e-5 per check for Gaussian errors). Quantities whose N → ∞ limit
is biased at finite width get an extra relative allowance, stated where used: nvar and E[σ]
are biased by O(L/N) (docs/theory.md §2, "finite width": nvar a few % high at N = 256–512).
E[m₁] = χ₁^L for Gaussian linear and linear residual nets is exact at any width (no allowance).
"""

import numpy as np
import pytest

from isometry import theory
from isometry.experiments._sampling import sample_singular_values

WIDTH = 256
K_SE = 4.0
#: relative finite-width allowance for nvar and E[σ] at L ≤ 4, N = 256 (O(L/N) bias)
FINITE_WIDTH = 0.05


def _stats(samples=8, **net):
    sv = sample_singular_values(width=WIDTH, samples=samples, **net)
    return {k: theory.mean_and_sem(v) for k, v in theory.spectrum_moments(sv).items()}


def _close(measured, predicted, allowance=0.0):
    mean, se = measured
    tol = K_SE * se + allowance * abs(predicted)
    assert abs(mean - predicted) <= tol, f"measured {mean:.5g} ± {se:.2g}, predicted {predicted:.5g}"


def test_gaussian_linear_net():
    depth, sw2 = 4, 1.1
    pred = theory.predict_spectrum("linear", depth, sw2, nodes=1000)
    stats = _stats(activation="linear", weights="gaussian", depth=depth, sigma_w2=sw2,
                   sigma_b2=0.0, q_star=1.0)
    _close(stats["m1"], sw2 ** depth)                       # m₁ = χ₁^L, exact in expectation
    assert pred.moments[0] == pytest.approx(sw2 ** depth)
    _close(stats["nvar"], depth, FINITE_WIDTH)                  # Fuss–Catalan: nvar = L
    _close(stats["mean_sigma"], theory.fuss_catalan_mean_sigma(depth, sw2), FINITE_WIDTH)
    assert stats["edge"][0] <= pred.edge * (1 + FINITE_WIDTH)  # the top λ falls short of the edge


def test_relu_gaussian_vs_orthogonal_nvar():
    """At χ₁ = 1, nvar = 2L with Gaussian weights and L with orthogonal ones."""
    depth = 4
    nvar = {}
    for weights in ("gaussian", "orthogonal"):
        pred = theory.predict_spectrum("relu", depth, 2.0, weights=weights, nodes=800)
        stats = _stats(samples=6, activation="relu", weights=weights, depth=depth, sigma_w2=2.0,
                       sigma_b2=0.0, q_star=1.0)
        _close(stats["nvar"], pred.nvar, FINITE_WIDTH)
        nvar[weights] = stats["nvar"][0]
    assert nvar["gaussian"] > 1.5 * nvar["orthogonal"]


def test_orthogonal_linear_net_is_isometric():
    depth, sw2 = 6, 1.2
    sv = sample_singular_values(activation="linear", weights="orthogonal", depth=depth,
                                width=WIDTH, sigma_w2=sw2, sigma_b2=0.3, samples=2, q_star=1.0)
    np.testing.assert_allclose(sv, sw2 ** (depth / 2), rtol=1e-12)
    pred = theory.predict_spectrum("linear", depth, sw2, weights="orthogonal")
    np.testing.assert_allclose(pred.density.point_sigma, [sw2 ** (depth / 2)], rtol=1e-12)


def test_linear_residual_m1():
    """x_{l+1} = x_l + α W_l x_l: E[m₁] = (1 + α² σ_w²)^L (FullyConnected variant="rezero")."""
    depth, alpha, sw2 = 6, 0.5, 1.0
    stats = _stats(activation="linear", weights="gaussian", depth=depth, sigma_w2=sw2,
                   sigma_b2=0.0, q_star=1.0, variant="rezero", alpha=alpha)
    _close(stats["m1"], theory.residual_linear_m1(depth, alpha, sw2))
