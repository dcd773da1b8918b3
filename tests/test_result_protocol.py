"""One result protocol: dense and matrix-free results mean the same by every shared name.

An operator with a prescribed spectrum (tests/helpers.py: Haar rotations around diag(σ)) with
exact zeros: the dense SVD returns them as round-off (~1e-16), below the one resolution
σ_max·ε·n, and the matrix-free engine's Gauss nodes converge onto them; both count them as
`zero_share` and take `mean_log`, `std_log` and `histogram` over the other σ.

The tolerances are the SLQ's statistical error. For a random unit probe v and a symmetric
matrix f(A), Var[vᵀ f(A) v] = 2 Var_λ(f) / (n + 2), Var_λ the variance of f over the
spectrum; a Rademacher probe in a Haar-rotated basis has the same to O(1/n). Every estimate
below is (to first order) the mean over p probes of such a quadratic form, so its standard
error is √(2 Var_λ(g) / ((n + 2) p)) for the g it linearizes to; the tests allow 4 of them.
"""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import isometry as iso
from helpers import known_spectrum_map
from isometry.diagnosis._findings import Finding
from isometry.diagnosis._result import empty_diagnosis
from isometry.diagnosis._tune import TuneResult
from isometry.spectrum._lanczos_result import LanczosSpectrum, TopSingularValues

N, ZEROS, PROBES = 400, 100, 32
#: σ log-uniform over half a decade (a flat density in log10 σ), then exact zeros.
SIGMA = np.concatenate([np.logspace(0.0, -0.5, N - ZEROS), np.zeros(ZEROS)])
RANGE = (-0.38, -0.12)  # inside the support, 3 kernel widths from either end
SIGMAS = 4.0  # standard errors allowed


@pytest.fixture(scope="module")
def results():
    fn, _ = known_spectrum_map(jax.random.key(1), jnp.asarray(SIGMA), N, N)
    x = jnp.ones(N, jnp.float64)
    dense = iso.jacobian_spectrum(fn, x)
    free = iso.lanczos_spectrum(fn, x, jax.random.key(0), k=4, num_steps=64, num_probes=PROBES)
    return dense, free


def slq_stderr(g: np.ndarray) -> float:
    """Standard error over PROBES probes of the quadrature of g over the spectrum SIGMA."""
    return math.sqrt(2 * np.var(g) / ((N + 2) * PROBES))


def test_zero_share_is_the_share_below_the_one_resolution(results):
    dense, free = results
    assert float(np.max(np.asarray(dense.singular_values)[-ZEROS:])) < float(dense.resolution)
    assert float(dense.zero_share) == ZEROS / N  # round-off of the SVD counts as zero
    z = ZEROS / N
    assert abs(float(free.zero_share) - z) < SIGMAS * slq_stderr((SIGMA == 0).astype(float))
    assert float(free.resolution) == pytest.approx(float(dense.resolution), rel=1e-9)


def test_mean_and_std_of_ln_sigma_over_the_nonzero_sigma(results):
    dense, free = results
    log = np.log(SIGMA[SIGMA > 0])
    mu, sd, kept = log.mean(), log.std(), 1 - ZEROS / N
    np.testing.assert_allclose(dense.mean_log, mu, rtol=1e-10)
    np.testing.assert_allclose(dense.std_log, sd, rtol=1e-10)
    on = SIGMA > 0  # the ratio estimates linearize to these g
    g_mean = np.where(on, np.log(np.where(on, SIGMA, 1)) - mu, 0) / kept
    g_std = np.where(on, (np.log(np.where(on, SIGMA, 1)) - mu) ** 2 - sd**2, 0) / (2 * sd * kept)
    assert abs(float(free.mean_log) - mu) < SIGMAS * slq_stderr(g_mean)
    assert abs(float(free.std_log) - sd) < SIGMAS * slq_stderr(g_std)


def test_histogram_density_integrates_to_the_share_inside_a_partial_range(results):
    dense, free = results
    inside = (np.log10(np.where(SIGMA > 0, SIGMA, 1)) > RANGE[0]) & \
             (np.log10(np.where(SIGMA > 0, SIGMA, 1)) < RANGE[1]) & (SIGMA > 0)
    share = inside.mean()
    for spec in (dense, free):
        values, edges = spec.histogram(bins=8, range=RANGE, density=True)
        area = float(np.sum(values * np.diff(edges)))
        tol = 2 / N if spec.exact else SIGMAS * slq_stderr(inside.astype(float))
        assert abs(area - share) < tol, (spec.engine, area, share)
    # the whole spectrum: the area is the share of σ above the resolution, on both (the
    # default range of the density ends 3 kernel widths out: its tails, ≈ 0.1 %, left out)
    for spec in (dense, free):
        for bins, range_, tol in ((40, (-3.0, 2.0), 1e-9), (40, None, 2e-3)):
            values, edges = spec.histogram(bins=bins, range=range_)
            area = float(np.sum(values * np.diff(edges)))
            assert area == pytest.approx(1 - float(spec.zero_share), abs=tol), spec.engine
    # expected counts of the matrix-free result, integer counts of the dense one
    counts, _ = dense.histogram(bins=8, range=RANGE, density=False)
    assert counts.sum() == inside.sum()
    expected, _ = free.histogram(bins=8, range=RANGE, density=False)
    assert abs(expected.sum() - inside.sum()) < SIGMAS * N * slq_stderr(inside.astype(float))


def test_binned_counts_leave_the_zeros_out_on_both(results):
    for spec in results:
        counts = spec.binned_counts(10, (-1.0, 1.0))
        assert counts.sum() == pytest.approx(N * (1 - float(spec.zero_share)), rel=1e-9)


def certified_pair(rtol: float):
    s = jnp.concatenate([jnp.array([10.0, 8.0, 6.0, 5.0]), jnp.linspace(3.0, 0.1, 196)])
    fn, _ = known_spectrum_map(jax.random.key(3), s, 200, 200)
    x = jnp.ones(200, jnp.float64)
    top = iso.top_singular_values(fn, x, k=4, rtol=rtol, key=jax.random.key(1))
    free = iso.lanczos_spectrum(fn, x, jax.random.key(2), k=4, rtol=rtol, num_probes=4)
    return s, top, free


def test_error_bounds_and_converged_mean_the_same_on_both_top_k_results():
    rtol = 1e-9
    s, top, free = certified_pair(rtol)
    for result, theta in ((top, top.singular_values), (free, free.top_singular_values)):
        assert result.rtol == rtol and result.error_bounds.shape == (4,)
        assert bool(jnp.all(s[:4] - theta <= result.error_bounds + 1e-13))  # refined bounds
        np.testing.assert_allclose(result.relative_error_bounds, result.error_bounds / theta)
        assert result.converged.shape == () and bool(result.converged)
        assert bool(result.converged) == bool(jnp.all(result.relative_error_bounds <= rtol))
        d = result.to_dict()
        assert d["converged"] is True and d["rtol"] == rtol and len(d["error_bounds"]) == 4
    assert bool(jnp.all(top.error_bounds <= top.residuals))  # residuals: the plain ones
    # under vmap both keep a leading axis on converged
    w = jax.random.normal(jax.random.key(0), (30, 30), jnp.float64) / jnp.sqrt(30.0)
    xs = jax.random.normal(jax.random.key(4), (3, 30), jnp.float64)
    f = lambda z: jnp.tanh(w @ z)  # noqa: E731
    tops = jax.vmap(lambda z: iso.top_singular_values(f, z, k=2, rtol=1e-8))(xs)
    frees = iso.spectrum_fn(lambda p, z: jnp.tanh(p @ z), "lanczos", batched=True, k=2,
                            rtol=1e-8, num_steps=8, num_probes=2)(w, xs, jax.random.key(5))
    assert tops.converged.shape == frees.converged.shape == (3,)


def test_old_names_answer_with_a_deprecation_warning(results):
    dense, free = results
    _, top, _ = certified_pair(1e-6)
    with pytest.warns(DeprecationWarning, match="error_bounds"):
        np.testing.assert_array_equal(free.residual_bounds, free.error_bounds)
    with pytest.warns(DeprecationWarning, match="residuals"):
        np.testing.assert_array_equal(top.residual_bounds, top.residuals)
    for spec in (dense, free):
        with pytest.warns(DeprecationWarning, match="zero_share"):
            assert float(spec.below_resolution) == float(spec.zero_share)
        with pytest.warns(DeprecationWarning, match="to_dict"):
            assert set(spec.summary()) == set(spec.statistic_names)


def test_arrays_round_trip_and_older_density_files(results):
    dense, free = results
    for spec in (dense, free):
        back = type(spec).from_arrays(spec.to_arrays())
        assert type(back) is type(spec) and back.to_dict() == spec.to_dict()
    old = {k: v for k, v in free.to_arrays().items() if k not in ("rtol", "error_bounds")}
    old["residual_bounds"] = np.asarray(free.error_bounds)  # a file written before the rename
    back = LanczosSpectrum.from_arrays(old)
    np.testing.assert_array_equal(back.error_bounds, free.error_bounds)
    assert back.rtol == 1e-6


def strict(doc) -> dict:
    json.dumps(doc, allow_nan=False)
    return doc


def test_every_result_has_to_dict_in_strict_json(results):
    dense, free = results
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no old name on the way
        zeros = iso.Spectrum.from_singular_values(jnp.zeros(3), 3, 3)  # mean -inf, std nan
        assert strict(zeros.to_dict())["mean_log"] is None
        for spec in (dense, free, zeros):
            assert strict(spec.to_dict())["engine"] == spec.engine
        _, top, _ = certified_pair(1e-6)
        assert isinstance(top, TopSingularValues) and strict(top.to_dict())["converged"]
        finding = Finding("ordered", "χ shrinks", math.nan, "scale up")
        assert strict(finding.to_dict())["value"] is None
        assert strict(empty_diagnosis([finding], "float64").to_dict())["findings"][0]["code"] \
            == "ordered"
        tune = TuneResult({"sigma_w2": 2.0}, {"sigma_w2": 1.0}, {"sigma_w2": 0.0}, "measured",
                          "chi", 0.0, 0.01, math.inf, math.nan, {"default": zeros, "tuned": dense},
                          [(1.0, math.nan, 0.0)])
        doc = strict(tune.to_dict())
        assert doc["tuned_spectrum"]["zero_share"] == 0.25 and doc["default_objective"] is None


def test_layerwise_and_batched_results_are_the_same_results_with_a_leading_axis(results):
    dense, _ = results
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), dense)
    assert isinstance(stacked, iso.Spectrum)
    np.testing.assert_array_equal(stacked.zero_share, [dense.zero_share] * 2)
    np.testing.assert_allclose(stacked.mean_log, [dense.mean_log] * 2)
    assert len(strict(stacked.to_dict())["mean_log"]) == 2
