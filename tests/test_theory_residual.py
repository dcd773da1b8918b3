"""Residual/ReZero Jacobian spectra at α > 0: closed forms, the free-product engine against
Fuss–Catalan and plain-net theory, the scaling limit in t = L·α²·σ_w²·μ₁, and measured spectra of
linear and ReLU residual nets at width 512 with tolerances from the spread over nets."""

import math

import numpy as np
import pytest

from isometry import theory
from isometry import theory as tr
from isometry.experiments._sampling import sample_singular_values


def test_one_factor_closed_forms():
    a, s = 0.3, 1.0
    m = tr.factor_moments([1.0] * 9, a, s, 4)
    assert m[0] == pytest.approx(1 + a * a * s, rel=1e-14)
    assert m[1] == pytest.approx(1 + 4 * a * a * s + 2 * a ** 4 * s * s, rel=1e-14)
    d = tr.d_moments("relu", 1.0, 4)  # Bernoulli(1/2): μ₁ = μ₂ = 1/2
    m = tr.factor_moments(d, a, 2.0, 2)
    assert m[1] == pytest.approx(1 + 4 * a * a * 2 * 0.5 + a ** 4 * 4 * (0.5 + 0.25), rel=1e-14)


def test_free_product_reproduces_fuss_catalan_and_plain_nets():
    mp = np.array([1.0, 2.0, 5.0, 14.0])  # Marchenko–Pastur (WWᵀ, ratio 1)
    np.testing.assert_allclose(tr.free_product_moments([mp] * 3),
                               theory.fuss_catalan_moments(3, 4), rtol=1e-12)
    # α → ∞: (αDW)(αDW)ᵀ/α² is the plain ReLU layer
    big = 1e4
    fm = tr.factor_moments(tr.d_moments("relu", 1.0, 3), big, 2.0, 3) / big ** np.array([2, 4, 6])
    np.testing.assert_allclose(tr.free_product_moments([fm] * 4),
                               theory.jacobian_moments(theory.d2_law("relu", 1.0), 4, 2.0, k=3),
                               rtol=1e-6)


@pytest.mark.parametrize("activation,sigma_w2", [("linear", 1.0), ("relu", 2.0), ("tanh", 1.5)])
def test_m1_and_additive_nvar(activation, sigma_w2):
    m = tr.residual_moments(activation, 12, 0.4, sigma_w2, 0.05 if activation == "tanh" else 0.0,
                            k=2)
    b2 = 0.05 if activation == "tanh" else 0.0
    assert m[0] == pytest.approx(tr.residual_m1(activation, 12, 0.4, sigma_w2, b2), rel=1e-10)
    assert m[1] / m[0] ** 2 - 1 == pytest.approx(
        tr.residual_nvar(activation, 12, 0.4, sigma_w2, b2), rel=1e-10)
    if activation == "linear":
        assert m[0] == pytest.approx(theory.residual_linear_m1(12, 0.4, 1.0), rel=1e-12)


def test_scaling_limit_depends_only_on_t():
    t = 1.0
    limit = tr.scaling_limit_moments(t, 4)
    np.testing.assert_allclose(limit[:3], [math.e, math.e ** 2 * 3, math.e ** 3 * 13], rtol=1e-12)
    for activation, sw2, L in [("linear", 1.0, 4000), ("relu", 2.0, 4000), ("linear", 0.5, 2000)]:
        mu1 = 1.0 if activation == "linear" else 0.5
        alpha = math.sqrt(t / (L * sw2 * mu1))
        assert tr.scaling_time(activation, L, alpha, sw2) == pytest.approx(t, rel=1e-12)
        m = tr.residual_moments(activation, L, alpha, sw2, k=4)
        # corrections are O(α²·k²) relative: 4000 layers at t = 1 leave ~2e-3 at k = 4
        np.testing.assert_allclose(m, limit, rtol=30 * alpha ** 2 * 16)


WIDTH, DEPTH, NETS, ALPHA = 512, 16, 4, 0.3


def _measured(activation, sigma_w2):
    sv = sample_singular_values(activation=activation, weights="gaussian", depth=DEPTH,
                                width=WIDTH, sigma_w2=sigma_w2, sigma_b2=0.0, samples=NETS,
                                q_star=math.nan, variant="rezero", alpha=ALPHA)
    return np.asarray(sv, np.float64) ** 2


def test_linear_residual_nets_match_in_full():
    """m_1..m_4 of 4 nets: mean within 4 standard errors (spread over nets) of the prediction."""
    lam = _measured("linear", 1.0)
    pred = tr.residual_moments("linear", DEPTH, ALPHA, 1.0, k=4)
    for k in range(1, 5):
        m, se = theory.mean_and_sem(np.mean(lam ** k, axis=1))
        assert abs(m - pred[k - 1]) <= 4 * se, (k, m, se, pred[k - 1])


def test_relu_residual_nets_match_in_the_bulk_with_one_outlier():
    """All but the largest λ: within 4 se plus one bulk value λ₂^k/N (the bulk has N − 1 of
    the N values the free law describes); the largest λ sits far above the bulk."""
    lam = _measured("relu", 2.0)
    pred = tr.residual_moments("relu", DEPTH, ALPHA, 2.0, k=4)
    assert np.all(lam[:, 0] > 3 * lam[:, 1])
    for k in range(1, 5):
        m, se = theory.mean_and_sem(np.sum(lam[:, 1:] ** k, axis=1) / WIDTH)
        allowance = float(np.mean(lam[:, 1] ** k)) / WIDTH
        assert abs(m - pred[k - 1]) <= 4 * se + allowance, (k, m, se, allowance, pred[k - 1])


def test_cli_theory_rezero(tmp_path, capsys):
    import json

    from isometry.cli import main

    rc = main(["theory", "--variant", "rezero", "--alpha", "0.1,0.3", "--activation", "linear",
               "--depth", "8", "--samples", "0", "--out", str(tmp_path), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["alpha"] for r in doc["records"]] == [0.1, 0.3]
    assert doc["records"][1]["predicted"]["m1"] == pytest.approx(1.09 ** 8, rel=1e-12)
    assert (tmp_path / "theory.png").exists()
    assert main(["theory", "--variant", "rezero", "--out", str(tmp_path)]) == 2


def _cdf_gap(lam, density):
    """Per net, F_measured − F_predicted of log10 σ at the predicted 10%, …, 90% quantiles."""
    cdf = np.concatenate([[0.0], np.cumsum(np.diff(density.log10_sigma)
                                           * (density.density[1:] + density.density[:-1]) / 2)])
    q = np.linspace(0.1, 0.9, 9)
    at = np.interp(q * cdf[-1], cdf, density.log10_sigma)
    s = 0.5 * np.log10(np.sort(lam, axis=1))
    return np.stack([np.searchsorted(row, at) / lam.shape[1] for row in s]) - q


@pytest.mark.parametrize("activation,sigma_w2", [("linear", 1.0), ("relu", 2.0)])
def test_density_matches_measured_spectra(activation, sigma_w2):
    """The predicted density of σ at α = 0.3 against 4 nets of width 512, depth 16.

    Statistic: the measured CDF of log10 σ at the predicted 10%, 20%, …, 90% quantiles, per
    net. Its mean over nets must lie within 4 standard errors (from the spread over the 4
    independent nets) plus 3/N of the predicted value: 3/N covers the O(1/N) finite-width
    corrections to the large-N law and, for ReLU, the one outlier far above the bulk (above
    every quantile point, so it is not counted; the free law describes N − 1 of the N values)
    — a shift of 1/N. The S-transform's truncation (k = 6) and the smoothing η = 1e-5 move the quantiles by
    less than 1e-3 in log10 σ (next test: k = 6 against 7, η doubled).
    """
    density = tr.residual_density(activation, DEPTH, ALPHA, sigma_w2)
    assert density.mass == pytest.approx(1.0, abs=1e-3)
    lam = _measured(activation, sigma_w2)
    gap = _cdf_gap(lam, density)
    mean, se = gap.mean(axis=0), gap.std(axis=0, ddof=1) / math.sqrt(len(gap))
    assert np.all(np.abs(mean) <= 4 * se + 3 / WIDTH), (mean, se)
    assert density.edge == pytest.approx(np.mean(lam[:, 1 if activation == "relu" else 0]),
                                         rel=0.15)


def _quantiles(d, q=(0.1, 0.5, 0.9)):
    cdf = np.concatenate([[0.0], np.cumsum(np.diff(d.log10_sigma)
                                           * (d.density[1:] + d.density[:-1]) / 2)])
    return np.interp(q, cdf / cdf[-1], d.log10_sigma)


def test_density_truncation_and_smoothing_are_small():
    """k = 6 against k = 7 terms of log S: < 1e-3 in log10 σ; η doubled: < 1e-4."""
    a = _quantiles(tr.residual_density("relu", DEPTH, ALPHA, 2.0))
    np.testing.assert_allclose(a, _quantiles(tr.residual_density("relu", DEPTH, ALPHA, 2.0, k=7)),
                               atol=1e-3)
    np.testing.assert_allclose(a, _quantiles(tr.residual_density("relu", DEPTH, ALPHA, 2.0,
                                                                 eta=2e-5, nodes=6000)),
                               atol=1e-4)


def test_cli_theory_rezero_overlays_the_density(tmp_path, capsys):
    import json

    from isometry.cli import main

    rc = main(["theory", "--variant", "rezero", "--alpha", "0.1,0.3", "--activation", "relu",
               "--depth", "8", "--width", "64", "--samples", "2", "--out", str(tmp_path),
               "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    for rec in doc["records"]:
        grid, dens = np.array(rec["density"]["log10_sigma"]), np.array(rec["density"]["density"])
        assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-2)
        h = rec["histogram"]
        assert np.sum(np.diff(h["edges"]) * np.array(h["density"])) == pytest.approx(1.0)
    assert (tmp_path / "theory.png").stat().st_size > 10_000
